"""Assemble a CLIP-MoE from dense models (docs/methods.md A.2, A.4).

`pack(stages)`: expert e of MoE block b is the FFN (fc1, fc2) of block b of stage e; everything else
(attention, norms, embeddings, projections, logit scale, the FFNs of non-MoE blocks) comes from
stage 0. `upcycle(dense, E)`: E copies of one dense model's FFNs (sparse upcycling). Routers are new,
with PyTorch's default init drawn from a generator seeded by `seed`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from ..errors import ClipforgeError
from ..models.clip_moe.configuration_clip_moe import CLIPMoEConfig
from ..models.clip_moe.modeling_clip_moe import CLIPMoEModel
from ..models.clip_moe.moe_layer import MoEFFN
from ..models.io import _materialize_buffers, load

Stage = nn.Module | str | os.PathLike
_FFN = re.compile(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)")


def _as_model(stage: Stage, index: int) -> tuple[CLIPModel, str]:
    if isinstance(stage, (str, os.PathLike)):
        model, source = load(stage), str(stage)
    else:
        model = stage
        source = getattr(model, "name_or_path", "") or f"stage {index} (in-memory model)"
    if type(model) is not CLIPModel:
        raise ClipforgeError(f"stage {index} ({source}) is a {type(model).__name__}; pack needs dense CLIPModels")
    return model, source


def _check_same_architecture(states: list[dict[str, Tensor]], sources: list[str]) -> None:
    ref = {k: tuple(v.shape) for k, v in states[0].items()}
    for state, source in zip(states[1:], sources[1:]):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != ref:
            diff = sorted(set(shapes.items()) ^ set(ref.items()))[:3]
            raise ClipforgeError(f"{source} does not share stage 0's architecture ({sources[0]}); "
                                 f"first differences: {diff}")


def _differences(states: list[dict[str, Tensor]], sources: list[str], keys: set[str], what: str) -> list[str]:
    """One note per stage whose tensors `keys` differ from stage 0's (stage 0's are the ones used)."""
    notes = []
    for e, (state, source) in enumerate(zip(states[1:], sources[1:]), start=1):
        differ = [k for k in state if k in keys and not torch.equal(state[k], states[0][k])]
        if differ:
            shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            notes.append(f"stage {e} ({source}) differs from stage 0 in {len(differ)} {what} ({shown}); "
                         "stage 0's were used")
    return notes


def reset_routers(model: CLIPMoEModel, seed: int) -> None:
    """Redraw every router with PyTorch's default Linear init (kaiming-uniform, a=√5) from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MoEFFN):
                # Drawn on the CPU in fp32, so the same seed gives the same routers on any device.
                w = torch.empty(module.router.weight.shape, dtype=torch.float32)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
                module.router.weight.copy_(w)


def pack(stages: Sequence[Stage], top_k: int = 2, moe_layers_vision: list[int] | None = None,
         moe_layers_text: list[int] | None = None, seed: int = 0, expert_sources: list[str] | None = None,
         **config: Any) -> CLIPMoEModel:
    """A CLIP-MoE whose expert e in each MoE block is that block's FFN from `stages[e]`.

    `stages`: dense `CLIPModel`s or model directories, stage 0 first (the base). `expert_sources`
    defaults to the directories (or model names). Other `CLIPMoEConfig` fields (expert_dropout,
    balance_loss, balance_alpha, ...) pass through `config`. Stage 0's tensors fill everything that is
    not an expert; where another stage's differ, the config's `pack_notes` records it, with a warning
    when they are non-FFN (shared) tensors. The "w/o MCL" ablation is `pack([base, direct_ft])`.
    """
    if not stages:
        raise ClipforgeError("pack needs at least one stage model")
    models, sources = zip(*(_as_model(s, i) for i, s in enumerate(stages)))
    if expert_sources is not None and len(expert_sources) != len(stages):
        raise ClipforgeError(f"expert_sources names {len(expert_sources)} experts for {len(stages)} stages")
    states = [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models]
    _check_same_architecture(states, list(sources))

    cfg = CLIPMoEConfig.from_dense(models[0].config, num_experts=len(stages), top_k=top_k,
                                   moe_layers_vision=moe_layers_vision, moe_layers_text=moe_layers_text,
                                   expert_sources=list(expert_sources or sources), **config)
    moe_blocks = {"vision_model": set(cfg.moe_layers("vision")), "text_model": set(cfg.moe_layers("text"))}
    expert_keys = {k for k in states[0] if (m := _FFN.fullmatch(k)) and int(m.group(2)) in moe_blocks[m.group(1)]}
    ffn_keys = {k for k in states[0] if _FFN.fullmatch(k)}
    # Non-FFN weights should be shared by all stages (MCL trains FFNs only): a difference is worth a
    # warning. FFNs of non-MoE blocks differ by design when a stage trained every block: a note.
    # The logit scale differs by design too when stages train with a fixed one (the released recipe).
    shared = _differences(states, list(sources), set(states[0]) - ffn_keys - {"logit_scale"},
                          "shared (non-FFN) tensors")
    for note in shared:
        warnings.warn(f"pack: {note}", stacklevel=2)
    notes = shared + _differences(states, list(sources), ffn_keys - expert_keys, "FFN tensors of non-MoE blocks")
    notes += _differences(states, list(sources), {"logit_scale"} & set(states[0]), "logit scale")
    if notes:
        cfg.pack_notes = notes

    with torch.device("meta"):
        model = CLIPMoEModel(cfg)
    target: dict[str, Tensor] = {}
    for key, value in states[0].items():
        if key not in expert_keys:
            target[key] = value.clone()
            continue
        prefix, name = key.split(".mlp.")
        for e, state in enumerate(states):
            target[f"{prefix}.mlp.experts.{e}.{name}"] = state[key].clone()
    dtype = states[0]["logit_scale"].dtype
    for name, param in model.named_parameters():
        if name.endswith("mlp.router.weight"):
            target[name] = torch.empty(param.shape, dtype=dtype)  # drawn by reset_routers below
    model.load_state_dict(target, strict=True, assign=True)
    _materialize_buffers(model)  # position ids, created on the meta device
    reset_routers(model, seed)
    return model.to(next(models[0].parameters()).device).eval()


def upcycle(dense: Stage, num_experts: int = 4, top_k: int = 2, seed: int = 0, **kw: Any) -> CLIPMoEModel:
    """Sparse upcycling: an MoE whose experts are `num_experts` copies of `dense`'s FFNs, new routers."""
    model, source = _as_model(dense, 0)
    sources = kw.pop("expert_sources", None) or [f"copy of {source}"] * num_experts
    return pack([model] * num_experts, top_k=top_k, seed=seed, expert_sources=sources, **kw)


def expert_model(moe: CLIPMoEModel, expert: int) -> CLIPModel:
    """The dense CLIP whose FFN in every MoE block is expert `expert`'s, everything else the CLIP-MoE's.

    For a DMU model whose every block is an MoE block this is MCL stage `expert`'s model up to its logit
    scale (stages train with a fixed one), which is why `dmu` need not keep the stage models on disk.
    """
    if not 0 <= expert < moe.config.num_experts:
        raise ClipforgeError(f"expert {expert} is not one of the model's {moe.config.num_experts}")
    if moe.config.text_position_split is not None:
        raise ClipforgeError("a CLIP-MoE with two text position tables (Long-CLIP) has no dense CLIP equivalent")
    dense_cfg = CLIPConfig(text_config=moe.config.text_config.to_dict(),
                           vision_config=moe.config.vision_config.to_dict(),
                           projection_dim=moe.config.projection_dim,
                           logit_scale_init_value=moe.config.logit_scale_init_value)
    with torch.device("meta"):
        model = CLIPModel(dense_cfg)
    state = {}
    for key, value in moe.state_dict().items():
        if ".mlp.router." in key:
            continue
        if ".mlp.experts." in key:
            prefix, rest = key.split(".mlp.experts.")
            e, name = rest.split(".", 1)
            if int(e) == expert:
                state[f"{prefix}.mlp.{name}"] = value.detach().clone()
            continue
        state[key] = value.detach().clone()
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_buffers(model)  # position ids: made on the CPU, moved with the model below
    return model.to(next(moe.parameters()).device).eval()

