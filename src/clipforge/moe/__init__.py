"""CLIP-MoE, the method: diversified multiplet upcycling (docs/methods.md Part A).

`clusters` + `cluster_sampler` + `embedding` + `mcl` (the MCL stages), `pack` (stage models → experts),
`balance` + `routers` (router training), `dmu` (the whole pipeline), `baselines` (direct FT, sparse
upcycling, w/o MCL), `routing` (how tokens spread over the experts; the report of a run is `clipforge.report.moe_run`). The model it makes lives in
`clipforge.models.clip_moe` (imported here, so the CLIP-MoE is registered with transformers). Every name
is imported on first use. (`pack` is not re-exported: the name would clash with the submodule
`clipforge.moe.pack`; use `from clipforge.moe.pack import pack`; likewise `from clipforge.moe.dmu import dmu`.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..models import clip_moe  # noqa: F401  (registers the CLIP-MoE with transformers)

# name → module (relative to this package); imported on first access.
_EXPORTS = {
    "RouterStep": ".balance",
    "balance_loss": ".balance",
    "switch_balance_loss": ".balance",
    "mixtral_balance_loss": ".balance",
    "text_token_mask": ".balance",
    "expert_load": ".balance",
    "upcycle": ".pack",
    "reset_routers": ".pack",
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'clipforge.moe' has no attribute {name!r}")
