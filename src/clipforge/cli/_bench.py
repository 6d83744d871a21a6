"""Load a benchmark script (`benchmarks/<name>/run.py`) of this source tree as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ClipforgeError


def load_benchmark(rel_path: Path, module_name: str, required: bool = True) -> ModuleType | None:
    """The module at `rel_path` under the source checkout (or the working directory); None if absent
    and not `required`. It is registered in `sys.modules` first: dataclasses look their module up there."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        path = root / rel_path
        if path.is_file():
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
    if required:
        raise ClipforgeError(f"{rel_path} not found: run from a clipforge source checkout")
    return None
