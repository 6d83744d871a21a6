"""CLIP-MoE: diversified multiplet upcycling (METHODS.md Part A).

`config` (CLIPMoEConfig), `layer` (MoEFFN), `model` (CLIPMoEModel), `balance` (balance losses and
RouterStep), `pack` (pack / upcycle dense stages), `convert_released` (the released checkpoints).

Names are imported on first use: `clipforge` imports this package (for `.config`) from an import
hook that fires right after `transformers` loads (see `clipforge._register_moe`), so nothing heavy
may load here. Keep new entries lazy too. (`pack` is not re-exported: the name would clash with the submodule
`clipforge.moe.pack`; use `from clipforge.moe.pack import pack`.)
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'clipforge.moe' has no attribute {name!r}")
