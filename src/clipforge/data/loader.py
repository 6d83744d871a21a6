"""DataLoader plumbing shared by training, embedding and evaluation: worker counts and pass reports.

* `auto_workers()` is the machine default of the CLI's `--workers` (CPU cores per local rank, minus
  the one the main process uses, at most 8); `default_workers(n)` sets a process-wide default for
  code that builds its loaders without asking (the CLI wraps a command in it), and
  `worker_count(n)` resolves a configured value against it.
* `SkipLog` collects bad samples found while reading, also inside DataLoader worker processes: a
  worker holds a copy of the dataset, so what it finds goes to a small file the main process reads
  back when the pass ends. `reporting(loader, dataset)` wraps a DataLoader so that every finished
  (or abandoned) pass calls `end_pass()` on the datasets that have one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any

from ..errors import ClipforgeError

MAX_AUTO_WORKERS = 8
_default: list[int | None] = [None]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_workers() -> int:
    """Workers per rank for this machine: its cores shared over the local ranks, one left to the main process."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(MAX_AUTO_WORKERS, _cpus() // local - 1))


def resolve_workers(n: int | None, flag: str = "--workers") -> int:
    """A `--workers` value: None → `auto_workers()`; negative → an error naming `flag`."""
    if n is None:
        return auto_workers()
    if n < 0:
        raise ClipforgeError(f"{flag} must be 0 or more, got {n}")
    return int(n)


@contextlib.contextmanager
def default_workers(n: int | None) -> Iterator[int]:
    """Within the block, loaders configured with 0 workers (the library default) use `n` (None: auto)."""
    old = _default[0]
    _default[0] = resolve_workers(n)
    try:
        yield _default[0]
    finally:
        _default[0] = old


def worker_count(n: int | None = None) -> int:
    """`n` if positive, else the process default set by `default_workers` (0 outside one)."""
    if n is not None and n > 0:
        return int(n)
    return int(_default[0] or 0)


def in_worker() -> bool:
    """True inside a DataLoader worker process."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


class SkipLog:
    """Bad samples found while reading: `(ident, reason)` pairs, gathered across worker processes."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []  # found in this process since the last `collect`
        self.dir = tempfile.mkdtemp(prefix="clipforge-skips-")
        self._owner = os.getpid()
        self._cleanup = weakref.finalize(self, _remove_dir, self.dir, self._owner)

    def __getstate__(self) -> dict[str, Any]:
        return {"found": [], "dir": self.dir, "_owner": self._owner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def add(self, ident: str, reason: str) -> None:
        self.found.append((ident, reason))
        if in_worker() or os.getpid() != self._owner:
            # One short line per bad sample, appended in one write (atomic for O_APPEND at this size).
            line = (ident.replace("\t", " ").replace("\n", " ") + "\t" + reason.replace("\n", " ") + "\n")
            with open(os.path.join(self.dir, f"w{os.getpid()}.tsv"), "a", encoding="utf-8",
                      errors="backslashreplace") as f:
                f.write(line)

    def collect(self) -> list[tuple[str, str]]:
        """Everything found since the last call, here and in workers (each once, in order found)."""
        out, self.found = self.found, []
        if os.path.isdir(self.dir):
            for name in sorted(os.listdir(self.dir)):
                path = os.path.join(self.dir, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        lines = f.read().splitlines()
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                out += [tuple(line.split("\t", 1)) for line in lines if "\t" in line]  # type: ignore[misc]
        return list(dict.fromkeys(out))


def _remove_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def pass_hooks(dataset: Any) -> list[Any]:
    """The datasets inside `dataset` (itself, `.dataset`, `.datasets`) that report passes (`end_pass`)."""
    out: list[Any] = []
    todo, seen = [dataset], set()
    while todo:
        d = todo.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        if callable(getattr(d, "end_pass", None)):
            out.append(d)
        todo += list(getattr(d, "datasets", None) or [])
        todo.append(getattr(d, "dataset", None))
    return out


def end_pass(dataset: Any, complete: bool = True) -> None:
    """Tell every reporting dataset inside `dataset` that a pass over it ended."""
    for d in pass_hooks(dataset):
        d.end_pass(complete=complete)


def unwrap_worker_error(e: ClipforgeError) -> ClipforgeError:
    """A ClipforgeError re-raised by the DataLoader carries the worker's traceback: keep its one-line message."""
    text = str(e)
    if "Traceback" not in text:
        return e
    for line in reversed(text.strip().splitlines()):
        if "ClipforgeError:" in line:
            return ClipforgeError(line.split("ClipforgeError:", 1)[1].strip())
    return e


class reporting:  # noqa: N801 - used like a function
    """A DataLoader whose passes end with `end_pass()` on the reporting datasets it reads.

    Iterating gives the loader's batches; when the pass is exhausted (or dropped part-way, e.g. a
    run that stops mid-epoch) the datasets report what they skipped. A ClipforgeError raised in a
    worker (the "stop" policy) comes back as its one-line message, not a worker traceback.
    """

    def __init__(self, loader: Any, dataset: Any = None) -> None:
        self.loader = loader
        self.dataset = dataset if dataset is not None else getattr(loader, "dataset", None)
        self._hooks = pass_hooks(self.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        if not self._hooks:
            return _plain(self.loader)
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        complete = False
        try:
            yield from _plain(self.loader)
            complete = True
        finally:
            for d in self._hooks:
                d.end_pass(complete=complete)


def _plain(loader: Any) -> Iterator[Any]:
    try:
        yield from loader
    except ClipforgeError as e:
        raise unwrap_worker_error(e) from None
