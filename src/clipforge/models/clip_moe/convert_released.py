"""Import (and export) the released CLIP-MoE checkpoints' layout (docs/methods.md A.6).

The released weights are an OpenAI-layout CLIP state dict in which MoE blocks hold
`{tower}.resblocks.{l}.gate.weight` [E, width] and `{tower}.resblocks.{l}.experts.{e}.c_fc|c_proj.*`
instead of `mlp.c_fc|c_proj.*` (tower: `visual.transformer` or `transformer`), plus Long-CLIP's second
text position table `positional_embedding_res`. The checkpoint stores E and the MoE blocks (read off
the keys) but not top-k: pass it (default 2, what the paper and code use).

The OpenAI importer does the rest: each MoE block's expert 0 stands in for its dense FFN while the
architecture is inferred and the shared tensors are mapped, and is then replaced by the experts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ClipforgeError
from ..checkpoint_files import read_state_dict
from ..convert_openai import hf_to_openai, openai_to_hf
from ..io import _materialize_buffers
from ..positions import LONG_CLIP_KEEP, merge_two_tables
from .configuration_clip_moe import CLIPMoEConfig
from .modeling_clip_moe import CLIPMoEModel

LONG_CLIP_SPLIT = LONG_CLIP_KEEP  # Long-CLIP: positions < 20 keep the first table, >= 20 read the second
RES_KEY = "positional_embedding_res"
HF_RES_KEY = "text_model.embeddings.position_embedding_res.weight"

_TOWERS = {"visual.transformer": "vision_model", "transformer": "text_model"}
_RELEASED = re.compile(r"(visual\.transformer|transformer)\.resblocks\.(\d+)\."
                       r"(gate\.weight|experts\.(\d+)\.(c_fc|c_proj)\.(weight|bias))")
_HF_MOE = re.compile(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.mlp\."
                     r"(router\.weight|experts\.(\d+)\.(fc1|fc2)\.(weight|bias))")
_FFN_NAMES = {"c_fc": "fc1", "c_proj": "fc2"}
_FFN_NAMES_REV = {v: k for k, v in _FFN_NAMES.items()}
_PARTS = ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")


def is_released_layout(sd: Mapping[str, Any]) -> bool:
    """True when `sd` holds released CLIP-MoE gate tensors."""
    return any(k.endswith(".gate.weight") and _RELEASED.fullmatch(k) for k in sd)


def is_released_dense_layout(sd: Mapping[str, Any]) -> bool:
    """True for the released code's dense checkpoints (its MCL stage models): OpenAI layout plus
    Long-CLIP's second position table, no gates."""
    return RES_KEY in sd and not is_released_layout(sd)


def released_dense_to_openai(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The plain OpenAI-layout state dict of a released dense checkpoint: its two position tables merged.

    Each position reads exactly one of the two tables, so one merged table is the same model (see
    `clipforge.models.positions`); the result imports with the OpenAI importer.
    """
    out = {k: v for k, v in sd.items() if k != RES_KEY}
    out["positional_embedding"] = merge_two_tables(sd["positional_embedding"], sd[RES_KEY], LONG_CLIP_SPLIT)
    return out


def load_released_dense(path: str | Path, **kw: Any) -> nn.Module:
    """A plain `CLIPModel` holding a released dense (MCL stage) checkpoint file, in eval mode."""
    from ..convert_openai import load_state_dict_openai

    try:
        sd = released_dense_to_openai(read_state_dict(path))
    except ClipforgeError as e:
        raise ClipforgeError(f"{path}: {e}") from None
    return load_state_dict_openai(sd, str(path), **kw)


def _collect(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[tuple[str, int], dict[str, Any]]]:
    """Split `sd` into its dense part and, per (tower, block), the gate and experts."""
    dense: dict[str, Tensor] = {}
    blocks: dict[tuple[str, int], dict[str, Any]] = {}
    for key, t in sd.items():
        m = _RELEASED.fullmatch(key)
        if key == RES_KEY or m is None:
            if key != RES_KEY:
                dense[key] = t
            continue
        block = blocks.setdefault((m.group(1), int(m.group(2))), {"gate": None, "experts": {}})
        if m.group(3) == "gate.weight":
            block["gate"] = t
        else:
            block["experts"].setdefault(int(m.group(4)), {})[f"{m.group(5)}.{m.group(6)}"] = t
    return dense, blocks


def _num_experts(blocks: dict[tuple[str, int], dict[str, Any]]) -> int:
    counts = set()
    for (tower, l), block in sorted(blocks.items()):
        where = f"{tower}.resblocks.{l}"
        if block["gate"] is None or block["gate"].ndim != 2:
            raise ClipforgeError(f"MoE block {where} lacks a 2-D 'gate.weight' tensor")
        n = block["gate"].shape[0]
        if sorted(block["experts"]) != list(range(n)):
            raise ClipforgeError(f"{where}.gate.weight routes to {n} experts but the block holds experts "
                                 f"{sorted(block['experts'])}")
        for e, parts in block["experts"].items():
            missing = [p for p in _PARTS if p not in parts]
            if missing:
                raise ClipforgeError(f"checkpoint lacks {where}.experts.{e}.{missing[0]}")
        counts.add(n)
    if len(counts) > 1:
        raise ClipforgeError(f"MoE blocks disagree on the number of experts: {sorted(counts)}")
    return counts.pop()


def released_to_hf(sd: Mapping[str, Tensor], top_k: int = 2, name: str | None = None,
                   vision_heads: int | None = None, text_heads: int | None = None, quick_gelu: bool = True,
                   expert_dropout: float = 0.1, source: str = "released CLIP-MoE checkpoint"
                   ) -> tuple[CLIPMoEConfig, dict[str, Tensor]]:
    """Config and HF-named tensors (for `CLIPMoEModel`) of a released CLIP-MoE state dict."""
    dense, blocks = _collect(sd)
    if not blocks:
        raise ClipforgeError("no MoE blocks ('...resblocks.{l}.gate.weight') in the checkpoint; "
                             "for a dense OpenAI-layout CLIP use the OpenAI importer")
    n_experts = _num_experts(blocks)
    for (tower, l), block in blocks.items():
        for part in _PARTS:
            dense[f"{tower}.resblocks.{l}.mlp.{part}"] = block["experts"][0][part]
    dense_cfg, hf = openai_to_hf(dense, name, vision_heads, text_heads, quick_gelu)

    for (tower, l), block in blocks.items():
        base = f"{_TOWERS[tower]}.encoder.layers.{l}.mlp."
        for part in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
            del hf[base + part]
        hf[base + "router.weight"] = block["gate"]
        for e, parts in block["experts"].items():
            for part, t in parts.items():
                kind, what = part.split(".")
                hf[f"{base}experts.{e}.{_FFN_NAMES[kind]}.{what}"] = t
    split = None
    if RES_KEY in sd:
        if tuple(sd[RES_KEY].shape) != tuple(sd["positional_embedding"].shape):
            raise ClipforgeError(f"'{RES_KEY}' has shape {tuple(sd[RES_KEY].shape)} but 'positional_embedding' "
                                 f"has {tuple(sd['positional_embedding'].shape)}")
        hf[HF_RES_KEY] = sd[RES_KEY]
        split = LONG_CLIP_SPLIT

    layers = {t: sorted(l for (tw, l) in blocks if tw == t) for t in _TOWERS}
    cfg = CLIPMoEConfig.from_dense(
        dense_cfg, num_experts=n_experts, top_k=top_k, moe_layers_vision=layers["visual.transformer"],
        moe_layers_text=layers["transformer"], expert_dropout=expert_dropout, text_position_split=split,
        expert_sources=[f"{source}, expert {e}" for e in range(n_experts)])
    _check_shapes(cfg, hf)
    return cfg, hf


def _check_shapes(cfg: CLIPMoEConfig, hf: Mapping[str, Tensor]) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CLIPMoEModel(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(hf))
    if missing:
        raise ClipforgeError(f"checkpoint lacks tensors the architecture needs, e.g. {missing[:3]}")
    for key, shape in expected.items():
        if tuple(hf[key].shape) != shape:
            raise ClipforgeError(f"tensor for {key!r} has shape {tuple(hf[key].shape)}, the architecture needs {shape}")


def load_released(path: str | Path, top_k: int = 2, **kw: Any) -> CLIPMoEModel:
    """A `CLIPMoEModel` holding a released CLIP-MoE checkpoint file (see `released_to_hf`), in eval mode."""
    kw.setdefault("source", f"released CLIP-MoE checkpoint {Path(path).name}")
    try:
        cfg, hf = released_to_hf(read_state_dict(path), top_k=top_k, **kw)
    except ClipforgeError as e:
        msg = str(e)
        raise ClipforgeError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    with torch.device("meta"):
        model = CLIPMoEModel(cfg)
    model.load_state_dict(hf, strict=True, assign=True)
    _materialize_buffers(model)
    return model.eval()


def export_released(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The released layout's tensors of a `CLIPMoEModel` (the exact inverse of `released_to_hf`)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    dense: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    rev_towers = {v: k for k, v in _TOWERS.items()}
    for key, t in sd.items():
        t = t.detach()
        m = _HF_MOE.fullmatch(key)
        if key == HF_RES_KEY:
            out[RES_KEY] = t
        elif m is None:
            dense[key] = t
        else:
            base = f"{rev_towers[m.group(1)]}.resblocks.{m.group(2)}."
            if m.group(3) == "router.weight":
                out[base + "gate.weight"] = t
            else:
                out[f"{base}experts.{m.group(4)}.{_FFN_NAMES_REV[m.group(5)]}.{m.group(6)}"] = t
    out.update(hf_to_openai(dense))
    return out
