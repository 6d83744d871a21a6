"""CLIP-MoE: diversified multiplet upcycling (docs/methods.md Part A).

The model: `config` (CLIPMoEConfig), `layer` (MoEFFN), `model` (CLIPMoEModel), `convert_released`
(the released checkpoints). The method: `clusters` + `cluster_sampler` + `mcl` (the MCL stages),
`pack` (stage models → experts), `balance` + `routers` (router training), `dmu` (the whole pipeline),
`baselines` (direct FT, sparse upcycling, w/o MCL), `routing` + `report` (what it gains and costs).

Names are imported on first use: `clipforge` imports this package (for `.config`) from an import
hook that fires right after `transformers` loads (see `clipforge._register_moe`), so nothing heavy
may load here. Keep new entries lazy too. (`pack` is not re-exported: the name would clash with the submodule
`clipforge.moe.pack`; use `from clipforge.moe.pack import pack`; likewise `from clipforge.moe.dmu import dmu`.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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
