"""clipforge: grow (CLIP-MoE) and shrink (MM-LG learngenes) pretrained CLIP models.

The top level re-exports the everyday calls; everything else lives in the subpackages
(`models`, `data`, `train`, `eval`, `moe`, `learngene`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name → module; imported on first use so `import clipforge` stays cheap.
_EXPORTS = {
    "build": "clipforge.models.registry",
    "list_models": "clipforge.models.registry",
    "make_config": "clipforge.models.registry",
    "save": "clipforge.models.io",
    "load": "clipforge.models.io",
    "tokenize": "clipforge.models.tokenizer",
    "transform_for": "clipforge.models.preprocess",
    "image_features": "clipforge.models.encode",
    "text_features": "clipforge.models.encode",
    "ClipforgeError": "clipforge.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipforge' has no attribute {name!r}")
