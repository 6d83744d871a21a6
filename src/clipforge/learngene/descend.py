"""Descendants: plain HF CLIPs of any depth and modality, numerically initialised from a learngene.

Part of clipforge's MM-LG reconstruction (the paper's abstract plus its TLEG lineage; see
`LearngeneConfig`). The conversion is a declarative table of key rules in the style of vmoe's
checkpoint converters: every tensor name of the target model matches exactly one rule, which says
where its value comes from. Block i of tower m with L′_m layers = the learngene's weighted sum at
position i/L′_m; the non-block parts are copies. A descendant narrower than the learngene is then cut
to its widths by element selection (`widths.Narrowing`, weight selection's rule). The result holds plain,
independent tensors (no parametrization, no storage shared with the learngene) and saves with
`clipforge.models.io.save`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..errors import ClipforgeError
from ..models.registry import MODEL_CLASSES, Kind, tower_config
from .auxnet import _materialize_position_ids
from .config import TOWERS, LearngeneConfig
from .learngene import NON_BLOCK_OF_NAME, PART_OF_PATH, Learngene
from .widths import BlockShape, Narrowing, scaled

Rule = Callable[[Learngene, "re.Match[str]", dict[str, int]], Tensor]


def _weighted_sum(lg: Learngene, m: re.Match[str], depths: dict[str, int]) -> Tensor:
    tower, layer, path = m["tower"], int(m["layer"]), m["path"]
    if path not in PART_OF_PATH:
        raise ClipforgeError(f"block tensor {m.string!r} has no learngene counterpart")
    return lg.block_weight(tower, layer, depths[tower], PART_OF_PATH[path])


def _copy(lg: Learngene, m: re.Match[str], depths: dict[str, int]) -> Tensor:
    return lg.non_block[NON_BLOCK_OF_NAME[m.string]]


_BLOCK = re.compile(r"(?:vision|text)_model\.encoder\.layers\.\d+\.(?P<path>.+)")

# target key pattern → (what it does, rule). Read top to bottom; each key must match exactly one.
KEY_RULES: list[tuple[str, str, Rule]] = [
    (r"(?P<tower>vision|text)_model\.encoder\.layers\.(?P<layer>\d+)\.(?P<path>.+)",
     "block i of L′: a(i, L′)·first + b(i, L′)·second", _weighted_sum),
    (r"vision_model\.(embeddings\..+|pre_layrnorm\..+|post_layernorm\..+)", "copy vision non-block", _copy),
    (r"visual_projection\.weight", "copy vision projection", _copy),
    (r"text_model\.(embeddings\..+|final_layer_norm\..+)", "copy text non-block", _copy),
    (r"text_projection\.weight", "copy text projection", _copy),
    (r"logit_scale", "copy logit scale", _copy),
]
_COMPILED = [(re.compile(p), what, rule) for p, what, rule in KEY_RULES]


def resolve(key: str) -> tuple[str, re.Match[str], Rule]:
    """The one rule for target tensor `key`: (description, match, rule)."""
    hits = [(what, m, rule) for pat, what, rule in _COMPILED if (m := pat.fullmatch(key))]
    if len(hits) != 1:
        raise ClipforgeError(f"descendant tensor {key!r} matches {len(hits)} key rules (needs exactly one)")
    return hits[0]


@torch.no_grad()
def descendant_state(learngene: Learngene, keys: list[str], depths: dict[str, int]) -> dict[str, Tensor]:
    """Values for the target tensor names `keys` (plain clones) under `KEY_RULES`."""
    out = {}
    for key in keys:
        _, m, rule = resolve(key)
        out[key] = rule(learngene, m, depths).detach().clone().contiguous()
    return out


def tower_of(name: str) -> str | None:
    """The tower a CLIP tensor belongs to (None: the logit scale)."""
    if name.startswith(("vision_model.", "visual_projection")):
        return "vision"
    if name.startswith(("text_model.", "text_projection")):
        return "text"
    return None


def descendant_shapes(cfg: LearngeneConfig, depths: dict[str, int], widths: dict[str, int | None],
                      towers: tuple[str, ...] = TOWERS) -> dict[str, BlockShape]:
    """Each tower's block shape at its asked width (None: the learngene's); one-line errors for a bad shape.

    A descendant is at most as deep as the ancestry and as wide as the learngene (itself at most the
    ancestry's width), so it is never larger than the ancestry's tower at the same depth.
    """
    shapes = {}
    for t in towers:
        if depths[t] < 1:
            raise ClipforgeError(f"{t} depth must be >= 1, got {depths[t]}")
        if cfg.max_depth(t) and depths[t] > cfg.max_depth(t):
            raise ClipforgeError(f"{t} depth {depths[t]} is deeper than the ancestry's {t} tower "
                                 f"({cfg.max_depth(t)} blocks)")
        own = cfg.tower_shape(t)
        width = widths.get(t) or own.width
        if width > own.width:
            raise ClipforgeError(f"{t} width {width} is wider than the learngene's {t} blocks ({own.width}; "
                                 "a descendant is at most as wide as the learngene, which is at most the ancestry)")
        shapes[t] = own if width == own.width else scaled(own, width, t)
    return shapes


def descend(learngene: Learngene, depth_vision: int | None = None, depth_text: int | None = None,
            kind: Kind = "clip", width_vision: int | None = None, width_text: int | None = None) -> PreTrainedModel:
    """A plain `CLIPModel` / `CLIPVisionModelWithProjection` / `CLIPTextModelWithProjection` in eval mode.

    Depths default to the learngene's Aux-Net depths, widths to its towers' (narrower: the learngene's
    blocks and non-block parts cut by `widths.Narrowing`, heads and MLP by `widths.scaled`); the depth
    and width of a tower the kind lacks are ignored.
    """
    if kind not in MODEL_CLASSES:
        raise ClipforgeError(f"unknown descendant kind {kind!r}; choose clip, vision or text")
    cfg = learngene.config
    depths = {"vision": cfg.aux_depth_vision if depth_vision is None else depth_vision,
              "text": cfg.aux_depth_text if depth_text is None else depth_text}
    towers = TOWERS if kind == "clip" else (kind,)
    shapes = descendant_shapes(cfg, depths, {"vision": width_vision, "text": width_text}, towers)
    with torch.device("meta"):
        full = MODEL_CLASSES[kind](tower_config(cfg.clip_config(depths["vision"], depths["text"]), kind))
    state = descendant_state(learngene, list(full.state_dict()), depths)
    cuts = {t: Narrowing(cfg.tower_shape(t), s) for t, s in shapes.items()}
    for name, value in state.items():
        t = tower_of(name)
        if t is None or cuts[t].identity:
            continue
        m = _BLOCK.fullmatch(name)
        state[name] = (cuts[t].block(PART_OF_PATH[m["path"]], value) if m else cuts[t].non_block(name, value)).clone()
    config = tower_config(cfg.clip_config(depths["vision"], depths["text"], shapes), kind)
    with torch.device("meta"):
        model = MODEL_CLASSES[kind](config)
    device = next(learngene.parameters()).device
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_position_ids(model, device)  # non-persistent position ids were built on meta
    return model.eval()


def provenance(learngene: Learngene, depth_vision: int | None, depth_text: int | None, kind: Kind,
               source: str | None = None, width_vision: int | None = None,
               width_text: int | None = None) -> dict[str, Any]:
    """What to record beside a descendant (for `io.save(provenance=...)`)."""
    c = learngene.config
    return {"source": source or "learngene", "method": "mmlg-descend", "kind": kind, "mode": c.mode,
            "schedule": c.schedule, "num_stages": c.num_stages, "construction": c.construction,
            "depth_vision": c.aux_depth_vision if depth_vision is None else depth_vision,
            "depth_text": c.aux_depth_text if depth_text is None else depth_text,
            "width_vision": width_vision or c.vision_width, "width_text": width_text or c.text_width,
            "width_rule": "narrower towers: uniform element selection (whole heads), head size and MLP ratio kept",
            "learngene_parameters": learngene.num_parameters()}
