"""Atomic writes: the one place clipforge puts files and directories on disk.

Everything is written beside its destination under a hidden temporary name and moved into place with
one `os.replace`, so a reader (or a rerun after a crash) sees the old version or the new one, never a
half-written file. Files are fsynced before the rename. Temporary files and directories are created
private (0600 / 0700) by `tempfile`; before the rename they get the mode a plain `open()` / `mkdir()`
would have given them, so outputs follow the user's umask.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ClipforgeError, first_line

# A full disk (or quota) gets one line naming the destination (errors.py: the project's error rule).
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode `open()` (0666) or `mkdir()` (0777) gives a new file or directory under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block succeeds, it replaces `path` in one rename.

    For writers that want a path (`torch.save`, `np.savez`, `fig.savefig`). On an error the temporary
    file is removed and `path` is left as it was; a full disk (ENOSPC, EDQUOT) becomes a
    `ClipforgeError` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            # The raw OSError names the hidden temporary file; the user needs the destination.
            raise ClipforgeError(f"cannot write {path}: {_NO_SPACE[e.errno]}") from None
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy `src` to `dst` atomically (the contents, not the permissions)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def file_digest(path: str | os.PathLike, chars: int = 16) -> str:
    """The first `chars` hex digits of a file's SHA-256: enough to tell two weight files apart."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:chars]


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict[str, Any]:
    """A JSON file that must hold an object (a config, a record): anything else is one line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ClipforgeError(f"{path}: not {what} (a JSON object is expected)")
    return data


def _jsonable(x: Any) -> Any:
    """JSON for the values results hold: tensors and numpy values, paths, sets."""
    if hasattr(x, "tolist"):  # torch tensors, numpy arrays and scalars
        return x.tolist()
    if isinstance(x, (Path, os.PathLike)):
        return str(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write `obj` as indented JSON to `path` atomically. Tensors, numpy values and paths are converted."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable, sort_keys=sort_keys) + "\n")


@contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory beside `out_dir`; on success it replaces `out_dir` in one rename.

    An existing `out_dir` is moved aside first and deleted only after the new one is in place, so an
    interruption at any point leaves a complete directory (old or new) under the name.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, default_mode(directory=True))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def portable_path(path: str | os.PathLike) -> str:
    """A path as files written for others show it: relative to the working directory when inside it,
    `~/...` under the home directory, else its last component; no machine's absolute layout."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base, shown in ((Path.cwd(), None), (Path.home(), "~")):
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        return str(rel) if shown is None else str(Path(shown) / rel)
    return p.name


def portable(value: Any) -> Any:
    """`value` (JSON-like) with every absolute path string made `portable_path` (recursively)."""
    if isinstance(value, str):
        return portable_path(value) if os.path.isabs(value) and "\n" not in value else value
    if isinstance(value, os.PathLike):
        return portable_path(value)
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value
