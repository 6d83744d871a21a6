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


def _register_moe() -> None:
    """Teach `transformers.AutoConfig` / `AutoModel` the CLIP-MoE without importing transformers now.

    If transformers is loaded already, register at once; otherwise a one-shot import hook registers
    right after the `transformers` package first finishes loading (not after one of its submodules:
    those load midway through each other's imports, where importing more of transformers fails).
    Registering imports `clipforge.moe.config` (transformers' config code, which loads torch). The
    model class follows when a `CLIPMoEConfig` is first built, which `AutoModel.from_pretrained`
    does before it looks the class up (see `clipforge.moe.config`).
    """
    import sys

    if "transformers" in sys.modules:
        _register_moe_config()
    else:
        sys.meta_path.insert(0, _AfterImport("transformers", _register_moe_config))


def _register_moe_config() -> None:
    try:
        import_module("clipforge.moe.config")
    except Exception as e:  # never break the user's `import transformers`
        import warnings

        warnings.warn(f"clipforge could not register the CLIP-MoE with transformers' AutoConfig: {e!r}; "
                      "`import clipforge.moe.model` registers it by hand", stacklevel=2)


class _AfterImport:
    """A meta-path finder that runs `callback` once, right after module `name` has executed."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        import sys
        from importlib.util import find_spec

        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding us again
        spec = find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, callback = spec.loader.exec_module, self.callback

        def exec_module(module: Any) -> None:
            run(module)
            callback()

        spec.loader.exec_module = exec_module  # this spec's own loader instance: nothing else sees it
        return spec


_register_moe()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipforge' has no attribute {name!r}")
