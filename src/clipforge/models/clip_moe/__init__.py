"""The CLIP-MoE model (docs/methods.md Part A): transformers' folder-per-model layout.

`configuration_clip_moe` (CLIPMoEConfig), `moe_layer` (MoEFFN, the top-k sparse block beside its balance
statistics), `modeling_clip_moe` (CLIPMoEModel), `card` (its model-card section), `remote` (the code every
saved directory ships, so it loads with `trust_remote_code=True` without clipforge) and `convert_released`
(the released checkpoints). The files keep the names the saved directories ship, so directories saved
before this package existed still load (`auto_map`).

Importing this package registers the CLIP-MoE with transformers (`AutoConfig`, `AutoModel`); `clipforge.load`
imports it when it meets a CLIP-MoE directory. The method that makes one (MCL stages, packing, routers) is
`clipforge.moe`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .configuration_clip_moe import MODEL_TYPE, CLIPMoEConfig
from .modeling_clip_moe import CLIPMoEModel, moe_param_counts
from .moe_layer import MoEFFN

AutoConfig.register(MODEL_TYPE, CLIPMoEConfig, exist_ok=True)
AutoModel.register(CLIPMoEConfig, CLIPMoEModel, exist_ok=True)

__all__ = ["CLIPMoEConfig", "CLIPMoEModel", "MODEL_TYPE", "MoEFFN", "moe_param_counts"]
