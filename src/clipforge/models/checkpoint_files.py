"""Checkpoint files read as data only: safetensors, weights-only pickles and TorchScript archives.

`read_state_dict` reads safetensors, pickles through `torch.load(weights_only=True)`, and TorchScript
archives (OpenAI's own `.pt` releases) by unpickling their `data.pkl` with an allowlist of
tensor-rebuilding globals. `torch.jit.load` is never called: it would run the archive's code. An archive
that needs its code to rebuild its tensors is refused with a line saying how to export a plain state
dict. The layout of what is read (OpenAI, Hugging Face) is `models.convert_openai`'s business.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ClipforgeError, first_line


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, unwrapped from `state_dict`/`model` containers and DDP prefixes.

    `.safetensors` is read with safetensors; `.pt/.pth/.bin` with `torch.load(weights_only=True)`, or as
    a TorchScript archive (OpenAI's own `.pt` releases) read as data, never with `torch.jit.load`.
    Pickles holding code, and archives whose tensors only their code could rebuild, are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipforgeError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    elif suffix in (".pt", ".pth", ".bin"):
        obj = _read_jit(path) if _is_torchscript(path) else _read_pickle(path)
    else:
        raise ClipforgeError(f"{path}: unknown checkpoint extension {suffix!r}; use .safetensors, .pt, .pth or .bin")
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ClipforgeError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _is_torchscript(path: Path) -> bool:
    """A TorchScript zip carries `<root>/constants.pkl` and `<root>/code/`; a plain torch.save zip does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        parts = [name.split("/") for name in zf.namelist()]
    return any(len(p) >= 2 and (p[1] == "constants.pkl" or p[1] == "code") for p in parts)


# TorchScript archives are read as data: `torch.jit.load` would run the archive's own code (a class's
# `__setstate__`), so the reader below unpickles `data.pkl` with an allowlist, turns every `__torch__`
# class into an inert placeholder, and learns which attributes are parameters and buffers from the
# `__parameters__` / `__buffers__` lines of `code/` (parsed as text, never executed).
_JIT_HINT = ("export a plain state dict in a trusted environment: "
             "torch.save(torch.jit.load(p).state_dict(), 'clip.pt')")
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_CLASS_LINE = re.compile(r"class\s+(\w+)\s*(?:\(([^)]*)\))?\s*:")
_ATTR_LIST = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_SETSTATE = re.compile(r"\s+def\s+__setstate__\b")


class _Refused(Exception):
    """The archive needs something the data-only reader will not do (its message says what)."""


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass
class _ScriptClass:
    """What `code/` declares about one TorchScript class."""

    is_module: bool = False
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    has_setstate: bool = False


class _ScriptObject:
    """Stands in for an archive's `__torch__` class: BUILD hands it its state, which it only records."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Tensor:
    """`torch._utils._rebuild_tensor_v2` on a storage read by `persistent_load` (a 1-D tensor)."""
    if not (isinstance(storage, Tensor) and isinstance(offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and all(isinstance(x, int) for x in (*size, *stride))):
        raise _Refused("it holds a tensor record that is not a plain view of a storage")
    return torch.as_strided(storage, size, stride, offset)  # torch checks the view fits the storage


def _identity(value: Any, *_: Any) -> Any:
    return value


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _identity,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "device"): str,
    **{("torch.jit._pickle", n): _identity
       for n in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")},
    **{("torch", n): _StorageType(d) for n, d in _STORAGE_DTYPES.items()},
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles `<root>/data.pkl` of a TorchScript zip with an allowlist of globals; calls nothing from it."""

    def __init__(self, zf: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(zf.read(f"{root}/data.pkl")))
        self._zf, self._root = zf, root
        self.classes: dict[str, type[_ScriptObject]] = {}
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:  # a fresh inert class per name: NEWOBJ needs a class
                self.classes[qualname] = type("ScriptObject", (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if (module, name) not in _SAFE_GLOBALS:
            raise _Refused(f"it needs {module}.{name} to rebuild, which clipforge does not run")
        return _SAFE_GLOBALS[(module, name)]

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _Refused(f"it holds a storage record of an unknown kind ({str(pid)[:60]})")
        _, kind, key, _, numel = pid
        if key not in self._storages:
            if not re.fullmatch(r"\w+", key):
                raise _Refused(f"it names a storage record {key!r}")
            raw = self._zf.read(f"{self._root}/data/{key}")
            itemsize = kind.dtype.itemsize
            if len(raw) != numel * itemsize:
                raise ValueError(f"storage data/{key} holds {len(raw)} bytes, expected {numel * itemsize}")
            self._storages[key] = (torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw
                                   else torch.empty(0, dtype=kind.dtype))
        return self._storages[key]


def _script_classes(zf: zipfile.ZipFile, root: str) -> dict[str, _ScriptClass]:
    """Qualified name → declared parameters/buffers of every class in `<root>/code/`, read as text."""
    classes: dict[str, _ScriptClass] = {}
    prefix = f"{root}/code/"
    for name in zf.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix):-len(".py")].replace("/", ".")
        current: _ScriptClass | None = None
        for line in zf.read(name).decode("utf-8", "replace").splitlines():
            if line and not line[0].isspace():  # a top-level line: a class starts, or the last one ended
                m = _CLASS_LINE.match(line)
                current = classes.setdefault(f"{module}.{m.group(1)}", _ScriptClass()) if m else None
                if current is not None and m and (m.group(2) or "").strip() == "Module":
                    current.is_module = True
            elif current is not None and (m := _ATTR_LIST.match(line)):
                names = ast.literal_eval(m.group(2))  # a list of string literals, evaluated as data
                if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                    raise ValueError(f"{name}: {m.group(1)} is not a list of names")
                current.is_module = True
                setattr(current, m.group(1).strip("_"), names)
            elif current is not None and _SETSTATE.match(line):
                current.has_setstate = True
    return classes


def _check_classes(named: Iterable[str], classes: dict[str, _ScriptClass]) -> None:
    """Refuse an archive whose classes `torch.jit.load` could not find, or would run code to restore
    (`__setstate__`): what it loads to would then differ from the data stored, so neither is guessed."""
    for qualname in named:
        if qualname.startswith("__torch__.torch.classes."):  # C++ objects, e.g. quantized packed weights
            raise _Refused(f"it holds a {qualname} that only TorchScript itself can rebuild")
        if qualname not in classes:
            raise _Refused(f"class {qualname} is not defined in its code/")
        if classes[qualname].has_setstate:
            raise _Refused(f"class {qualname} restores itself with code (__setstate__), which clipforge does not run")


def _collect_jit(obj: Any, classes: dict[str, _ScriptClass], prefix: str, out: dict[str, Tensor],
                 ancestors: tuple[int, ...] = ()) -> None:
    """Parameters, then buffers, then submodules' tensors, named as `ScriptModule.state_dict()` names them."""
    info = classes[obj.qualname]  # `_check_classes` vouched for every class the pickle named
    state = obj.__dict__.get("state")
    if not isinstance(state, dict):
        raise _Refused(f"class {obj.qualname} is stored as {type(state).__name__}, not as attributes")
    if id(obj) in ancestors:
        raise ValueError(f"module {prefix.rstrip('.') or '<root>'} contains itself")
    for attr in (*info.parameters, *info.buffers):
        value = state.get(attr)
        if value is not None and not isinstance(value, Tensor):
            raise ValueError(f"{prefix}{attr} is a {type(value).__name__}, not a tensor")
        if value is not None:
            out[prefix + attr] = value.detach()
    for attr, value in state.items():
        if isinstance(value, _ScriptObject) and classes[value.qualname].is_module:
            _collect_jit(value, classes, f"{prefix}{attr}.", out, (*ancestors, id(obj)))


def _read_jit(path: Path) -> dict[str, Tensor]:
    """The `state_dict()` a TorchScript archive would load to, read without running any of its code."""
    try:
        with zipfile.ZipFile(path) as zf:
            roots = {n.split("/")[0] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")}
            if len(roots) != 1:
                raise ValueError(f"expected one <root>/data.pkl, found {len(roots)}")
            root = roots.pop()
            order = zf.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in zf.namelist() else "little"
            if order != sys.byteorder:
                raise _Refused(f"its tensors are stored {order}-endian")
            classes = _script_classes(zf, root)
            unpickler = _ArchiveUnpickler(zf, root)
            obj = unpickler.load()
            _check_classes(unpickler.classes, classes)
            if not isinstance(obj, _ScriptObject):
                raise _Refused(f"it holds a {type(obj).__name__}, not a scripted module")
            out: dict[str, Tensor] = {}
            _collect_jit(obj, classes, "", out)
            return out
    except _Refused as e:
        raise ClipforgeError(f"{path}: TorchScript archive refused: {e}; {_JIT_HINT}") from None
    except Exception as e:  # a truncated zip, a missing record, a malformed pickle: each has its own type
        raise ClipforgeError(f"{path}: not a readable TorchScript archive ({first_line(e)}); {_JIT_HINT}") from None


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise ClipforgeError(f"{path}: holds pickled code or objects, not just tensors; "
                                 "it will not be unpickled (re-save it as plain tensors or .safetensors)") from None
        raise ClipforgeError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:  # truncated zips, garbage bytes: torch raises a zoo of types
        raise ClipforgeError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Peel training containers (`{"state_dict": ...}`, `{"model": ...}`) and a DDP `module.` prefix."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ClipforgeError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise ClipforgeError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key)] = value
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out
