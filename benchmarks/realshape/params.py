"""Parameter counts on the meta device: descendants beside the ancestry at the same depth, CLIP-MoE stored vs
active, learngenes stored. No weights are allocated, so ViT-L/14 (428M; 1.2B as a 4-expert CLIP-MoE) costs
nothing to count.

Every count is `clipforge.models.params.count_params` (per tower, projections with their tower), of a model
built by `clipforge.models.registry.build` (or `CLIPMoEModel`, `Learngene(..., initialise=False)`) under
`torch.device("meta")`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from clipforge.learngene.pipeline import ShapeSpec, parse_shape, shape_name
from clipforge.learngene.widths import BlockShape, scaled
from clipforge.models.params import count_params
from clipforge.models.registry import build, make_config

TOWERS = ("vision", "text")
KIND_TOWERS = {"clip": TOWERS, "vision": ("vision",), "text": ("text",)}


def _key(tower: str) -> str:
    return f"{tower}_config"


def block_shape(spec: dict[str, Any], tower: str) -> BlockShape:
    c = spec[_key(tower)]
    return BlockShape(c["hidden_size"], c["num_attention_heads"], c["intermediate_size"])


def with_tower(spec: dict[str, Any], tower: str, depth: int | None = None, width: int | None = None) -> dict[str, Any]:
    """`spec` with `tower` at another depth and/or width (heads keep their size, the MLP its ratio, as
    `learngene descend` narrows)."""
    out = copy.deepcopy(spec)
    c = out[_key(tower)]
    if depth is not None:
        c["num_hidden_layers"] = depth
    if width is not None and width != c["hidden_size"]:
        s = scaled(block_shape(spec, tower), width, tower)
        c.update(hidden_size=s.width, num_attention_heads=s.heads, intermediate_size=s.mlp)
    return out


def counts(spec: dict[str, Any], kind: str = "clip") -> dict[str, int]:
    """Parameters per tower of the model `spec` of `kind` (clip, vision, text), counted on the meta device."""
    with torch.device("meta"):
        return count_params(build(spec, kind=kind))


def descendant_spec(ancestry: dict[str, Any], shape: ShapeSpec) -> dict[str, Any]:
    """The architecture `learngene descend --shape` gives from a full-width learngene of `ancestry`."""
    spec = ancestry
    for tower in KIND_TOWERS[shape.kind]:
        spec = with_tower(spec, tower, getattr(shape, f"depth_{tower}"), getattr(shape, f"width_{tower}"))
    return spec


def descendant_row(ancestry: dict[str, Any], text: str) -> dict[str, Any]:
    """One descendant's parameters per tower beside the ancestry's tower at the same depth (full width)."""
    shape = parse_shape(text)
    mine = counts(descendant_spec(ancestry, shape), shape.kind)
    towers = {}
    same_depth = ancestry
    for tower in KIND_TOWERS[shape.kind]:
        depth = getattr(shape, f"depth_{tower}")
        same_depth = with_tower(same_depth, tower, depth)
        c = same_depth[_key(tower)]
        d = descendant_spec(ancestry, shape)[_key(tower)]
        towers[tower] = {"depth": depth, "width": d["hidden_size"], "heads": d["num_attention_heads"],
                         "mlp": d["intermediate_size"], "params": mine[tower],
                         "ancestry_width": c["hidden_size"]}
    theirs, full = counts(same_depth, shape.kind), counts(ancestry)
    for tower, row in towers.items():
        row["ancestry_same_depth"] = theirs[tower]
        row["ratio"] = row["params"] / theirs[tower]
        row["ancestry_full"] = full[tower]
        row["ratio_full"] = row["params"] / full[tower]
    return {"shape": text, "name": shape_name(shape), "kind": shape.kind, "towers": towers,
            "total": mine["total"], "ancestry_same_depth_total": theirs["total"],
            "ratio": mine["total"] / theirs["total"]}


def narrow_widths(shapes: list[str]) -> dict[str, int]:
    """The tower widths of the first CLIP shape that gives both (a narrow learngene at a descendant's widths)."""
    s = next(x for x in map(parse_shape, shapes) if x.kind == "clip" and x.width_vision and x.width_text)
    return {"vision": s.width_vision, "text": s.width_text}


def _round_to(x: float, step: int) -> int:
    return max(step, int(round(x / step)) * step)


def relative_shape(text: str, src: dict[str, Any], dst: dict[str, Any]) -> str:
    """The shape `text` of an `src` descendant carried to `dst` at the same relative depth and width (depth
    rounded, width rounded to a multiple of `dst`'s head size)."""
    shape = parse_shape(text)
    parts = []
    for tower in KIND_TOWERS[shape.kind]:
        s, d = src[_key(tower)], dst[_key(tower)]
        depth = max(1, round(getattr(shape, f"depth_{tower}") * d["num_hidden_layers"] / s["num_hidden_layers"]))
        width = getattr(shape, f"width_{tower}")
        head = block_shape(dst, tower).head_size
        parts.append(f"{depth}" if width is None else
                     f"{depth}x{_round_to(width * d['hidden_size'] / s['hidden_size'], head)}")
    return ":".join([shape.kind, *parts])


def moe_counts(spec: dict[str, Any], experts: int, top_k: int) -> dict[str, Any]:
    """A CLIP-MoE of `spec` (every block MoE, `experts` experts, `top_k` per token): parameters stored and
    active per token, per tower."""
    from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
    from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel

    cfg = CLIPMoEConfig.from_dense(make_config(spec), num_experts=experts, top_k=top_k)
    with torch.device("meta"):
        model = CLIPMoEModel(cfg)
    return moe_model_counts(model)


def moe_model_counts(model: torch.nn.Module) -> dict[str, Any]:
    """Stored and active-per-token parameters per tower of a CLIP-MoE (a token runs top_k of the experts of
    each MoE block; routers count as active)."""
    from clipforge.models.clip_moe.moe_layer import MoEFFN

    stored = count_params(model)
    idle = {t: 0 for t in TOWERS}
    experts = top_k = 0
    for name, module in model.named_modules():
        if isinstance(module, MoEFFN):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            idle["vision" if name.startswith("vision_model") else "text"] += per_expert * (
                module.num_experts - module.top_k)
            experts, top_k = module.num_experts, module.top_k
    active = {t: stored[t] - idle[t] for t in TOWERS}
    active["other"] = stored["other"]
    active["total"] = stored["total"] - sum(idle.values())
    return {"experts": experts, "top_k": top_k, "stored": stored, "active": active}


def learngene_counts(spec: dict[str, Any], construction: str, width_vision: int | None = None,
                     width_text: int | None = None) -> dict[str, int]:
    """What an MM-LG learngene of ancestry `spec` stores (`Learngene.parameter_breakdown`), full width or at
    the given widths, with the default choices of `learngene extract` (mmlg, linear schedule, one stage)."""
    from clipforge.learngene.config import LearngeneConfig
    from clipforge.learngene.learngene import Learngene

    widths = {k: v for k, v in (("vision_width", width_vision), ("text_width", width_text)) if v is not None}
    cfg = LearngeneConfig.from_ancestry(make_config(spec), construction=construction, **widths)
    with torch.device("meta"):
        return Learngene(cfg, initialise=False).parameter_breakdown()


def table(ancestry: dict[str, Any], shapes: list[str], experts: int, top_k: int,
          narrow: dict[str, int]) -> dict[str, Any]:
    """The parameter figures of one architecture: the ancestry, each descendant beside the ancestry at the same
    depth, the CLIP-MoE stored / active, and the learngenes (full width and at the `narrow` widths)."""
    learngenes = {}
    for construction in ("select", "project"):
        learngenes[f"{construction}, full width"] = learngene_counts(ancestry, construction)
        learngenes[f"{construction}, vision {narrow['vision']} / text {narrow['text']}"] = learngene_counts(
            ancestry, construction, narrow["vision"], narrow["text"])
    return {"ancestry": counts(ancestry), "descendants": [descendant_row(ancestry, s) for s in shapes],
            "moe": moe_counts(ancestry, experts, top_k), "learngenes": learngenes}
