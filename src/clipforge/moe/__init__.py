"""CLIP-MoE: diversified multiplet upcycling (docs/methods.md Part A).

The model: `config` (CLIPMoEConfig), `layer` (MoEFFN), `model` (CLIPMoEModel), `convert_released`
(the released checkpoints). The method: `clusters` + `cluster_sampler` + `mcl` (the MCL stages),
`pack` (stage models → experts), `balance` + `routers` (router training), `dmu` (the whole pipeline),
`baselines` (direct FT, sparse upcycling, w/o MCL), `routing` + `evaluate` (what it gains and costs).

Importing this package registers the CLIP-MoE with transformers (`AutoConfig`, `AutoModel`), so
`AutoModel.from_pretrained(dir)` knows it after `import clipforge.moe`; `clipforge.load` imports it when
it meets a CLIP-MoE directory. Without clipforge, a saved directory loads through its shipped code
(`trust_remote_code=True`, see `remote`). Every other name is imported on first use. (`pack` is not re-exported: the name would clash with the submodule
`clipforge.moe.pack`; use `from clipforge.moe.pack import pack`; likewise `from clipforge.moe.dmu import dmu`.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from transformers import AutoConfig, AutoModel

from .config import MODEL_TYPE, CLIPMoEConfig
from .model import CLIPMoEModel

AutoConfig.register(MODEL_TYPE, CLIPMoEConfig, exist_ok=True)
AutoModel.register(CLIPMoEConfig, CLIPMoEModel, exist_ok=True)

# name → module (relative to this package); imported on first access.
_EXPORTS = {
    "CLIPMoEConfig": ".config",
    "MoEFFN": ".layer",
    "CLIPMoEModel": ".model",
    "moe_param_counts": ".model",
    "RouterStep": ".balance",
    "balance_loss": ".balance",
    "switch_balance_loss": ".balance",
    "mixtral_balance_loss": ".balance",
    "text_token_mask": ".balance",
    "expert_load": ".balance",
    "upcycle": ".pack",
    "reset_routers": ".pack",
    "load_released": ".convert_released",
    "released_to_hf": ".convert_released",
    "export_released": ".convert_released",
    "is_released_layout": ".convert_released",
    "MCLConfig": ".mcl",
    "run_stages": ".mcl",
    "RouterConfig": ".routers",
    "train_routers": ".routers",
    "DMUConfig": ".dmu",
    "FinetuneConfig": ".baselines",
    "direct_ft": ".baselines",
    "sparse_upcycling": ".baselines",
    "without_mcl": ".baselines",
    "routing_stats": ".routing",
    "plot_routing": ".routing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'clipforge.moe' has no attribute {name!r}")
