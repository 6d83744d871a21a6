"""One run lifecycle for every command that writes a directory (docs/design.md, "Runs").

A `Run` is one command's output directory, from the first check to the finished artefact:

* `Run(out, kind, settings, inputs=..., overwrite=...)` checks what it can before touching the disk:
  `out` is not a file, and is not, does not contain and does not lie inside any input (always, even
  with `--overwrite`: a command never writes over what it reads).
* `with run:` takes an exclusive lock (a sibling `.NAME.lock` with a POSIX record lock: a second process gets
  one line naming the live run; the kernel drops the lock of a process that died, so a stale lock is free), removes
  temp files an interrupted write left, puts back a run an interrupted `--overwrite` had put aside, and
  decides from one source of truth, the claim `settings.json` (kind, settings, status):
  finished with these settings → `run.done` (the command prints `run.skip_message()` and stops);
  claimed with these settings but unfinished → `run.resumed`; anything else (another kind of run, other
  settings, files that are not a run) is refused in one line unless `overwrite`, which puts the old
  directory aside until this run finishes and puts it back if it fails or is interrupted.
* The command writes into `run.dir` and calls `run.finish()`: status finished, checkpoints removed, the
  old run deleted.

Two shapes. A *run directory* (`artefact="model"`, the default) holds the claim, `log.jsonl`,
`checkpoints/` and the artefact (`out/model`), and resumes. An *artefact directory* (`artefact=None`:
`build`, `import`, `export`, `moe pack`...) is the output itself: the command writes into a staging
sibling (`run.dir`) that `finish()` renames into place, claim included, so `out` is never half-written.

Only rank 0 touches the disk; under torchrun every rank learns the decision by broadcast.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import distributed as D
from .errors import ClipforgeError
from .files import default_mode, write_json

SETTINGS = "settings.json"
CHECKPOINTS = "checkpoints"
FINISHED, RUNNING = "finished", "running"
# Temp names `files.atomic_path` / `atomic_dir` / `Run` leave when killed mid-write.
_TEMP = re.compile(r"^\..+\.(tmp-\w+|old-\d+|\w{8}\.tmp.*)$")
_HELD: dict[Path, Run] = {}  # runs this process holds, so a nested Run on the same directory is refused


def normalise(obj: Any) -> Any:
    """JSON round trip, so settings compare equal to what was written (tuples → lists, paths → str)."""
    return json.loads(json.dumps(obj, default=str))


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def read_claim(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The claim of `run_dir` ({"kind", "settings", "status"}), or None when it holds none.

    Claims written before runs recorded a kind give kind None; before they recorded a status, status None
    (the caller decides from the artefact, see `_finished`)."""
    path = Path(run_dir) / SETTINGS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: not valid JSON ({e}); pass --overwrite to start over") from None
    if isinstance(data, dict) and {"kind", "settings"} <= set(data) <= {"kind", "settings", "status"}:
        return {"kind": data["kind"], "settings": data["settings"], "status": data.get("status")}
    return {"kind": None, "settings": data, "status": None}


def _same(old: Any, new: Any, same: Callable[[Any, Any], bool] | None) -> bool:
    return old == new or (same is not None and same(old, new))


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_out(out: Path, inputs: Iterable[str | os.PathLike | None], flag: str = "--out") -> None:
    """Refuse an output that is a file, or that is, contains or lies inside any existing input."""
    if out.exists() and not out.is_dir():
        raise ClipforgeError(f"{flag} {out} is a file, not a directory; choose another output directory")
    o = out.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue  # built-in data names, registry architectures
        i = Path(item).resolve()
        if _inside(o, i) or _inside(i, o):
            what = "is" if o == i else ("lies inside" if _inside(o, i) else "contains")
            raise ClipforgeError(f"{flag} {out} {what} the input {item}; a command never writes over what it "
                                 "reads: choose another output directory")


def is_finished(out: str | os.PathLike, kind: str, settings: dict[str, Any], artefact: str | None = "model",
                same: Callable[[Any, Any], bool] | None = None) -> bool:
    """True if `out` holds a finished `kind` run of `settings` (a read-only look: no lock, nothing written).

    `same(old, new)` compares settings where an older record should still count (default: equality)."""
    claim = read_claim(out)
    if claim is None or claim["kind"] not in (None, kind) or not _same(claim["settings"], normalise(settings), same):
        return False
    return _finished(claim, Path(out), artefact)


def _finished(claim: dict[str, Any], out: Path, artefact: str | None) -> bool:
    """A claim's status; for a claim written before runs recorded one, whether its artefact is complete."""
    if claim["status"] is not None:
        return claim["status"] == FINISHED
    art = out if artefact is None else out / artefact
    return (art / "config.json").is_file() or (artefact is not None and art.is_dir() and any(art.iterdir()))


class Run:
    """One command's output directory: check, lock, decide done / resume / refuse, finish (see module doc)."""

    def __init__(self, out: str | os.PathLike, kind: str, settings: dict[str, Any], *,
                 inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                 artefact: str | None = "model", flag: str = "--out",
                 same: Callable[[Any, Any], bool] | None = None) -> None:
        self.out = Path(out)
        self.same = same
        self.kind, self.settings, self.overwrite = kind, normalise(settings), overwrite
        self.artefact, self.flag = artefact, flag
        check_out(self.out, inputs, flag)
        self.done = self.resumed = False
        self._lock_fd: int | None = None
        self._aside: Path | None = None
        self._staging: Path | None = None
        self._created = self._was_empty = self._hold = False
        self._main = D.rank() == 0

    # --- where the command writes -------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """Where the command writes: `out` for a run directory, the staging directory for an artefact one."""
        return self._staging if self._staging is not None else self.out

    @property
    def artefact_path(self) -> Path:
        return self.out if self.artefact is None else self.out / self.artefact

    def skip_message(self) -> str:
        return f"{self.out}: already finished with these settings; skipping (pass --overwrite to redo it)"

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        decision = None
        if self._main:
            try:
                decision = self._start()
            except BaseException:
                self._release()
                raise
        decision = D.broadcast_object(decision) if D.world_size() > 1 else decision
        self.done, self.resumed = decision["done"], decision["resumed"]
        D.barrier()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._main:
            try:
                if exc_type is not None:
                    self._abort()
            finally:
                self._release()
        if exc_type is None:
            D.barrier()

    def hold(self) -> Run:
        """Enter the run for the rest of the process (a benchmark's work directory); released at exit."""
        self.__enter__()
        self._hold = True
        atexit.register(self._release)
        return self

    def finish(self, *, keep_checkpoints: bool = False, cleanup: Iterable[str | os.PathLike] = ()) -> Path:
        """Mark the run finished (after its artefact is saved), remove its checkpoints, delete the old run."""
        if self._main and not self.done:  # (a finished run entered again is left exactly as it was)
            if self._staging is not None:
                write_json(self._staging / SETTINGS, self._claim(FINISHED))
                os.chmod(self._staging, default_mode(directory=True))
                if self.out.exists():
                    self._put_aside()
                os.replace(self._staging, self.out)
                self._staging = None
            else:
                write_json(self.out / SETTINGS, self._claim(FINISHED))
                if not keep_checkpoints:
                    for d in [self.out / CHECKPOINTS, *cleanup]:
                        shutil.rmtree(d, ignore_errors=True)
            if self._aside is not None:
                shutil.rmtree(self._aside, ignore_errors=True)
                self._aside = None
        self.done = True
        return self.artefact_path

    # --- internals ------------------------------------------------------------------------------

    def _claim(self, status: str) -> dict[str, Any]:
        return {"kind": self.kind, "settings": self.settings, "status": status}

    def _start(self) -> dict[str, bool]:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._sweep()
        claim = read_claim(self.out)
        if claim is not None and claim["kind"] in (None, self.kind):
            self._sweep_inside()  # only a run of this kind is ours to tidy
        if claim is not None and claim["kind"] in (None, self.kind) \
                and _same(claim["settings"], self.settings, self.same) and not self.overwrite:
            if _finished(claim, self.out, self.artefact):
                return {"done": True, "resumed": False}
            if self.artefact is not None:
                return {"done": False, "resumed": True}
        elif self.out.exists() and any(self.out.iterdir()):
            if not self.overwrite:
                raise ClipforgeError(self._refusal(claim))
            if self.artefact is not None:
                self._put_aside()
        if self.artefact is None:  # write beside `out`, rename into place at finish()
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        else:
            self._created = not self.out.exists()
            self._was_empty = self.out.is_dir() and not any(self.out.iterdir())
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / SETTINGS, self._claim(RUNNING))
        return {"done": False, "resumed": False}

    def _refusal(self, claim: dict[str, Any] | None) -> str:
        tail = "pass --overwrite to replace it or choose another output directory"
        if claim is None:
            return f"{self.out} is not empty and holds no clipforge run ({SETTINGS}); {tail}"
        if claim["kind"] is not None and claim["kind"] != self.kind:
            return f"{self.out} holds a `{claim['kind']}` run, not a `{self.kind}` run; {tail}"
        fields = ", ".join(_diff(claim["settings"], self.settings)[:6])
        return f"{self.out} holds a `{self.kind}` run made with other settings ({fields}); {tail}"

    def _aside_name(self, pid: int | str) -> Path:
        return self.out.with_name(f".{self.out.name}.aside-{pid}")

    def _put_aside(self) -> None:
        self._aside = self._aside_name(os.getpid())
        os.replace(self.out, self._aside)

    def _sweep(self) -> None:
        """Under the lock nobody else writes here: put back an interrupted overwrite's old run, drop temp files."""
        for aside in sorted(self.out.parent.glob(f".{self.out.name}.aside-*")):
            claim = read_claim(self.out) if self.out.is_dir() else None
            if claim is not None and claim["status"] == FINISHED and claim["kind"] == self.kind:
                shutil.rmtree(aside, ignore_errors=True)  # the new run had finished: the old one can go
            else:  # the new run never finished: it gives way to the old one
                if self.out.exists():
                    shutil.rmtree(self.out)
                os.replace(aside, self.out)
        _remove_temps(self.out.parent.glob(f".{self.out.name}.*"))

    def _sweep_inside(self) -> None:
        _remove_temps(sorted(self.out.rglob(".*"), reverse=True))

    def _abort(self) -> None:
        """The command failed or was interrupted: leave what resumes, remove what does not, put the old run back."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._aside is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.replace(self._aside, self.out)
            self._aside = None
        elif (self._created or self._was_empty) and self.out.is_dir() and not _holds_work(self.out):
            if self._created:
                shutil.rmtree(self.out, ignore_errors=True)
            else:  # the user's empty directory stays, empty
                for p in self.out.iterdir():
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _lock(self) -> None:
        prev = _HELD.get(self.out.resolve())
        if prev is not None and prev._hold and prev.kind == self.kind:
            prev._release()  # a benchmark called again in the same process takes its own hold over
        if self.out.resolve() in _HELD:
            raise ClipforgeError(f"{self.out} is already in use by this process (a `{_HELD[self.out.resolve()].kind}` "
                                 "run); choose another output directory")
        path = self.out.with_name(f".{self.out.name}.lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:  # a POSIX record lock: fork()ed children (DataLoader workers) do not inherit it, death frees it
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                holder = _read_lock(fd)
                os.close(fd)
                raise ClipforgeError(f"{self.out} is in use by another clipforge process ({holder}); wait for it "
                                     "to finish or choose another output directory") from None
            try:  # the holder may have removed the file between our open and our lock: lock the file on disk
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "kind": self.kind,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._lock_fd, self._lock_path = fd, path
        _HELD[self.out.resolve()] = self

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        _HELD.pop(self.out.resolve(), None)
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def _read_lock(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        info = {}
    if not info:
        return "a live lock"
    return f"pid {info.get('pid')} on {info.get('host')}, a `{info.get('kind')}` run since {info.get('since')}"


def _remove_temps(paths: Iterable[Path]) -> None:
    for p in paths:
        if _TEMP.match(p.name) and p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _holds_work(run_dir: Path) -> bool:
    """True if `run_dir` holds anything a rerun resumes from (beyond its claim and an empty log)."""
    for p in run_dir.rglob("*"):
        if p.is_file() and p.name != SETTINGS and not (p.name == "log.jsonl" and p.stat().st_size == 0):
            return True
    return False


def make_artefact(out: str | os.PathLike, kind: str, settings: dict[str, Any], write: Any, *,
                  inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False) -> bool:
    """Make the artefact directory `out` once: `write(staging_dir)` fills it, then it is renamed into place.

    Returns False (writing nothing) when `out` already holds this artefact made with these settings; the
    `--out` rules of `Run` apply (a directory of other files is refused unless `overwrite`)."""
    with Run(out, kind, settings, inputs=inputs, overwrite=overwrite, artefact=None) as run:
        if run.done:
            print(run.skip_message())
            return False
        write(run.dir)
        run.finish()
    return True


def cached_record(path: str | os.PathLike, key: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A result record kept in `path` for `key`: read back when it was made for the same key, else `make()`d,
    stamped with the key and written atomically. The one settings-keyed cache (measurements, benchmark units)."""
    path, key = Path(path), normalise(key)
    if path.is_file():
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            rec = None  # a record cut short: made again
        if isinstance(rec, dict) and rec.get("key") == key:
            return rec
    rec = {**make(), "key": key}
    write_json(path, rec)
    return rec
