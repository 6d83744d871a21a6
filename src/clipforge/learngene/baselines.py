"""Baseline initialisers: descendants of the same shapes as MM-LG's, from an ancestry or from nothing.

docs/methods.md B.5. Each returns `(model, record)`: a plain HF model in eval mode and a JSON-ready record
of what it inherited (put it in the saved model's provenance).

* `scratch`: random (HF's init, seeded).
* `heur_lg` (Heur-LG, Wang et al. AAAI 2022): the ancestry's last k blocks of each tower become the
  descendant's top k blocks (all of them, from the top, when the descendant has fewer than k layers);
  embeddings, norms, projections and logit scale are copied; lower blocks stay random.
* `auto_lg` (Auto-LG, arXiv 2305.02279, with our score, a [choice]): per tower, score every ancestry
  block on one small batch and inherit the k highest-scoring blocks, kept in their original order and
  stacked as the descendant's top k blocks on random lower ones. Scores, per block l with input x_l
  and output x_{l+1} (per token, averaged over the batch's tokens, padding excluded when an
  attention mask is given):
    "block_influence" (default; ShortGPT's Block Influence): 1 − cos(x_l, x_{l+1});
    "relative_change": ‖x_{l+1} − x_l‖ / ‖x_l‖.
  A high score means the block changes its input most, so it is the one least safely dropped.

* `tinyclip` (TinyCLIP's manual weight inheritance, Wu et al. ICCV 2023): block i of a depth-d tower
  is ancestry block floor(i·L/d) (uniform layer selection: 0, 2, 4, 6 of 8 for d = 4); everything else
  copied. Its distillation (affinity mimicking: KL of the image-to-text and text-to-image affinities
  to the teacher's) is `Distill(alpha=1)`, run by the benchmark's pre-training.
* `weight_selection` (Xu et al. ICLR 2024): the first d ancestry blocks (their best layer selection).

Narrower descendants. Every inheriting baseline (the two above, Heur-LG and Auto-LG) cuts a narrower
descendant's tensors out of the ancestry's by weight selection's element selection, as `widths.Narrowing`
does for the learngene: residual and MLP channels uniformly (j·D // n), attention channels by whole heads
spread uniformly when the head size is kept (else uniformly), the same indices in every tensor of a tower
(non-block tensors included), so selected channels stay connected from layer to layer. TinyCLIP narrows
by learned masks; clipforge uses this selection for it too (its manual inheritance covers depth only).
Vision- and text-only descendants (`Shape(config, "vision" | "text")`) inherit their one tower.

TLEG-per-tower and shared-only are `LearngeneConfig.mode`s (descendants come from `descend`); PT-FT is
a training recipe, run by the benchmark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..errors import ClipforgeError
from ..models.registry import Kind, build
from .config import TOWERS
from .learngene import PART_OF_PATH, block_param_name
from .widths import BlockShape, Narrowing

SCORES = ("block_influence", "relative_change")
ELEMENT_SELECTION = "uniform (j·D) // n of residual and MLP channels, whole heads spread uniformly (widths.Narrowing)"
_BLOCK = re.compile(r"(?P<tower>vision|text)_model\.encoder\.layers\.(?P<layer>\d+)\.(?P<path>.+)")


@dataclass(frozen=True)
class Shape:
    """A descendant's shape: an architecture (`CLIPConfig`, registry name or dict) and a model kind."""

    config: Any
    kind: Kind = "clip"

def _towers(model: nn.Module) -> list[str]:
    return [t for t in TOWERS if hasattr(model, f"{t}_model")]


def _depth(model: nn.Module, tower: str) -> int:
    return len(getattr(model, f"{tower}_model").encoder.layers)


def scratch(shape: Shape, seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """A randomly initialised descendant."""
    return build(shape.config, seed=seed, kind=shape.kind), {"method": "scratch", "seed": seed}


def _block_shape(config: Any) -> BlockShape:
    return BlockShape(int(config.hidden_size), int(config.num_attention_heads), int(config.intermediate_size))


def _narrowings(ancestry: nn.Module, model: nn.Module) -> dict[str, Narrowing]:
    """Per tower of `model`, the element selection from the ancestry's block shape to the model's."""
    out = {}
    for t in _towers(model):
        mine = getattr(model.config, f"{t}_config", model.config)
        out[t] = Narrowing(_block_shape(getattr(ancestry.config, f"{t}_config")), _block_shape(mine))
    return out


def _tower_of_key(key: str) -> str | None:
    if key.startswith(("vision_model.", "visual_projection")):
        return "vision"
    if key.startswith(("text_model.", "text_projection")):
        return "text"
    return None


def _selected(src: dict[str, Tensor], name: str, key: str, cuts: dict[str, Narrowing], want: torch.Size) -> Tensor:
    """Ancestry tensor `name`, cut for descendant tensor `key` by its tower's element selection."""
    if name not in src:
        raise ClipforgeError(f"the ancestry has no tensor {name!r} to give the descendant")
    t, m = src[name], _BLOCK.fullmatch(key)
    cut = cuts.get(_tower_of_key(key) or "")
    if cut is not None:
        t = cut.block(PART_OF_PATH[m["path"]], t) if m else cut.non_block(key, t)
    if t.shape != want:  # an axis the tower's widths do not cover (a smaller projection): uniform selection
        t = select_elements(t, tuple(want), name)
    return t.detach().clone()


@torch.no_grad()
def _inherit(ancestry: nn.Module, model: nn.Module, picks: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """Copy the non-block tensors and stack the ancestry blocks `picks[tower]` on top of `model`'s towers
    (cut to the model's widths by element selection where it is narrower).

    Returns, per tower, the [descendant layer, ancestry layer] pairs placed.
    """
    src, cuts = ancestry.state_dict(), _narrowings(ancestry, model)
    placed = {t: [[_depth(model, t) - len(c) + j, a] for j, a in enumerate(c)] for t, c in picks.items()}
    source_layer = {(t, mine): theirs for t, pairs in placed.items() for mine, theirs in pairs}
    new: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        m = _BLOCK.fullmatch(key)
        if m:
            theirs = source_layer.get((m["tower"], int(m["layer"])))
            if theirs is None:
                continue  # a lower block: stays random
            name = block_param_name(m["tower"], theirs, m["path"])
        else:
            name = key
        new[key] = _selected(src, name, key, cuts, value.shape)
    model.load_state_dict(new, strict=False)
    return placed


def _check_k(k: int) -> None:
    if k < 1:
        raise ClipforgeError(f"k must be >= 1, got {k}")


def heur_lg(ancestry: nn.Module, shape: Shape, k: int = 3, seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Heur-LG: inherit the ancestry's last k blocks per tower (fewer if the descendant is shallower)."""
    _check_k(k)
    model = build(shape.config, seed=seed, kind=shape.kind)
    picks = {}
    for t in _towers(model):
        n, depth = min(k, _depth(model, t), _depth(ancestry, t)), _depth(ancestry, t)
        picks[t] = list(range(depth - n, depth))
    placed = _inherit(ancestry, model, picks)
    return model.eval(), {"method": "heur_lg", "k": k, "seed": seed, "inherited": placed}


@torch.no_grad()
def block_scores(ancestry: nn.Module, data: dict[str, Tensor], tower: str,
                 score: str = "block_influence") -> list[float]:
    """One score per ancestry block of `tower` on the batch `data` (see the module docstring)."""
    if score not in SCORES:
        raise ClipforgeError(f"unknown Auto-LG score {score!r}; choose {', '.join(SCORES)}")
    module = getattr(ancestry, f"{tower}_model")
    was_training = ancestry.training
    ancestry.eval()
    try:
        if tower == "vision":
            out = module(pixel_values=data["pixel_values"], output_hidden_states=True)
            mask = None
        else:
            mask = data.get("attention_mask")
            out = module(input_ids=data["input_ids"], attention_mask=mask, output_hidden_states=True)
    finally:
        ancestry.train(was_training)
    hidden = [h.float() for h in out.hidden_states]  # input of block 0, then each block's output
    weights = torch.ones(hidden[0].shape[:2]) if mask is None else mask.float()
    weights = weights.to(hidden[0].device)
    scores = []
    for x, y in zip(hidden[:-1], hidden[1:]):
        if score == "block_influence":
            per_token = 1 - F.cosine_similarity(x, y, dim=-1)
        else:
            per_token = (y - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
        scores.append(float((per_token * weights).sum() / weights.sum()))
    return scores


def auto_lg(ancestry: nn.Module, shape: Shape, k: int = 3, *, data: dict[str, Tensor],
            score: str = "block_influence", seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Auto-LG: inherit the k highest-scoring ancestry blocks per tower, in order, on random lower blocks.

    `data`: one small batch (`pixel_values`, and `input_ids` with optional `attention_mask`, for the
    towers the descendant has). The record holds every block's score and the choice.
    """
    _check_k(k)
    model = build(shape.config, seed=seed, kind=shape.kind)
    picks, scores = {}, {}
    for t in _towers(model):
        scores[t] = block_scores(ancestry, data, t, score)
        n = min(k, _depth(model, t), len(scores[t]))
        # Highest first; a tie goes to the lower block (stable sort over indices).
        best = sorted(range(len(scores[t])), key=lambda i: -scores[t][i])[:n]
        picks[t] = sorted(best)
    placed = _inherit(ancestry, model, picks)
    return model.eval(), {"method": "auto_lg", "k": k, "score": score, "seed": seed, "scores": scores,
                          "chosen": picks, "inherited": placed}


def select_elements(src: Tensor, shape: tuple[int, ...], name: str = "tensor") -> Tensor:
    """`src` cut to `shape` by uniform element selection: along a dim shrinking D → n, indices (j·D) // n."""
    if src.dim() != len(shape):
        raise ClipforgeError(f"{name}: {src.dim()}-d in the ancestry, {len(shape)}-d in the descendant")
    out = src
    for dim, (big, small) in enumerate(zip(src.shape, shape)):
        if small > big:
            raise ClipforgeError(f"{name}: the descendant is wider than the ancestry along dim {dim} "
                                 f"({small} > {big}); selection can only shrink")
        if small < big:
            out = out.index_select(dim, (torch.arange(small) * big) // small)
    return out


@torch.no_grad()
def _select(ancestry: nn.Module, model: nn.Module, layer_map: dict[str, list[int]]) -> None:
    """Every descendant tensor from the ancestry: block i of tower t from ancestry block layer_map[t][i], each
    tensor cut to the descendant's widths by the tower's element selection (`widths.Narrowing`)."""
    src, cuts = ancestry.state_dict(), _narrowings(ancestry, model)
    new: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        m = _BLOCK.fullmatch(key)
        name = block_param_name(m["tower"], layer_map[m["tower"]][int(m["layer"])], m["path"]) if m else key
        new[key] = _selected(src, name, key, cuts, value.shape)
    model.load_state_dict(new, strict=True)


def _check_depths(model: nn.Module, ancestry: nn.Module) -> None:
    for t in _towers(model):
        if _depth(model, t) > _depth(ancestry, t):
            raise ClipforgeError(f"the descendant's {t} tower ({_depth(model, t)} blocks) is deeper than the "
                                 f"ancestry's ({_depth(ancestry, t)}): selection can only shrink")


def tinyclip(ancestry: nn.Module, shape: Shape, seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """TinyCLIP-style inheritance: uniformly spaced ancestry blocks floor(i·L/d), the rest copied."""
    model = build(shape.config, seed=seed, kind=shape.kind)
    _check_depths(model, ancestry)
    layer_map = {t: [(i * _depth(ancestry, t)) // _depth(model, t) for i in range(_depth(model, t))]
                 for t in _towers(model)}
    _select(ancestry, model, layer_map)
    return model.eval(), {"method": "tinyclip", "layers": layer_map, "seed": seed,
                          "element_selection": ELEMENT_SELECTION}


def weight_selection(ancestry: nn.Module, shape: Shape, seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Weight selection: the first d ancestry blocks per tower, elements selected uniformly where narrower."""
    model = build(shape.config, seed=seed, kind=shape.kind)
    _check_depths(model, ancestry)
    layer_map = {t: list(range(_depth(model, t))) for t in _towers(model)}
    _select(ancestry, model, layer_map)
    return model.eval(), {"method": "weight_selection", "layers": layer_map, "seed": seed,
                          "element_selection": ELEMENT_SELECTION}
