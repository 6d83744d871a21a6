"""Descendants: plain HF CLIPs of any depth and modality, numerically initialised from a learngene.

Part of clipforge's MM-LG reconstruction (the paper's abstract plus its TLEG lineage; see
`LearngeneConfig`). The conversion is a declarative table of key rules in the style of vmoe's
checkpoint converters: every tensor name of the target model matches exactly one rule, which says
where its value comes from. Block i of tower m with L′_m layers = the learngene's weighted sum at
position i/L′_m; the non-block parts are copies. The result holds plain, independent tensors (no
parametrization, no storage shared with the learngene) and saves with `clipforge.models.io.save`.
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
from .learngene import NON_BLOCK_OF_NAME, PART_OF_PATH, Learngene

Rule = Callable[[Learngene, "re.Match[str]", dict[str, int]], Tensor]


def _weighted_sum(lg: Learngene, m: re.Match[str], depths: dict[str, int]) -> Tensor:
    tower, layer, path = m["tower"], int(m["layer"]), m["path"]
    if path not in PART_OF_PATH:
        raise ClipforgeError(f"block tensor {m.string!r} has no learngene counterpart")
    return lg.block_weight(tower, layer, depths[tower], PART_OF_PATH[path])


def _copy(lg: Learngene, m: re.Match[str], depths: dict[str, int]) -> Tensor:
    return lg.non_block[NON_BLOCK_OF_NAME[m.string]]


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


def descend(learngene: Learngene, depth_vision: int | None = None, depth_text: int | None = None,
            kind: Kind = "clip") -> PreTrainedModel:
    """A plain `CLIPModel` / `CLIPVisionModelWithProjection` / `CLIPTextModelWithProjection` in eval mode.

    Depths default to the learngene's Aux-Net depths; the depth of a tower the kind lacks is ignored.
    """
    if kind not in MODEL_CLASSES:
        raise ClipforgeError(f"unknown descendant kind {kind!r}; choose clip, vision or text")
    cfg = learngene.config
    depths = {"vision": cfg.aux_depth_vision if depth_vision is None else depth_vision,
              "text": cfg.aux_depth_text if depth_text is None else depth_text}
    config = tower_config(cfg.clip_config(depths["vision"], depths["text"]), kind)
    with torch.device("meta"):
        model = MODEL_CLASSES[kind](config)
    state = descendant_state(learngene, list(model.state_dict()), depths)
    device = next(learngene.parameters()).device
    model.load_state_dict(state, strict=True, assign=True)
    for module in model.modules():  # non-persistent position ids were built on meta
        buf = module._buffers.get("position_ids")
        if buf is not None and buf.is_meta:
            module._buffers["position_ids"] = torch.arange(buf.shape[-1], device=device).expand(buf.shape).clone()
    return model.eval()


def provenance(learngene: Learngene, depth_vision: int | None, depth_text: int | None, kind: Kind,
               source: str | None = None) -> dict[str, Any]:
    """What to record beside a descendant (for `io.save(provenance=...)`)."""
    c = learngene.config
    return {"source": source or "learngene", "method": "mmlg-descend", "kind": kind, "mode": c.mode,
            "schedule": c.schedule, "num_stages": c.num_stages,
            "depth_vision": c.aux_depth_vision if depth_vision is None else depth_vision,
            "depth_text": c.aux_depth_text if depth_text is None else depth_text,
            "learngene_parameters": learngene.num_parameters()}
