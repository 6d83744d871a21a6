"""Training checkpoints on disk: atomic writes, a `latest` pointer, rotation, and RNG capture.

A checkpoint is `checkpoints/step_{N}.pt`, a dict of plain tensors, numbers, strings, lists and
dicts, so `torch.load(weights_only=True)` reads it. Files are written to `*.tmp` and moved into place
with `os.replace`, so a crash never leaves a half-written checkpoint or pointer behind.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ClipforgeError, first_line
from ..files import atomic_path, write_text

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states as plain lists and tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` captured."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:  # on any error the temporary file is removed and `path` is untouched
        torch.save(obj, tmp)


def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested state (about what `torch.save` writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_failure(ckpt_dir: Path, error: BaseException, needed: int) -> str:
    """One line for a failed checkpoint write: "no space left" only when the errno or the free space says so."""
    # torch.save reports a full disk as a bare RuntimeError ("file write failed"), without an errno.
    try:
        free: int | None = shutil.disk_usage(ckpt_dir).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in str(error).lower()
    if full or (free is not None and free < needed):
        reason = "no space left on the device" + (f" ({free / 2**20:.0f} MiB free, the checkpoint needs about "
                                                   f"{needed / 2**20:.0f} MiB)" if free is not None else "")
    else:
        text = str(error).strip()
        reason = text.splitlines()[0][:200] if text else type(error).__name__
    kept = latest_checkpoint(ckpt_dir)
    last = f"the last checkpoint {kept.name} is kept" if kept is not None else "there is no earlier checkpoint"
    return f"cannot write a checkpoint to {ckpt_dir}: {reason}; {last}"


def _atomic_write_text(text: str, path: Path) -> None:
    write_text(path, text)


def step_files(ckpt_dir: Path) -> dict[int, Path]:
    """{step: path} of the `step_N.pt` files in `ckpt_dir`."""
    if not ckpt_dir.is_dir():
        return {}
    out = {}
    for p in ckpt_dir.iterdir():
        m = _STEP_FILE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, keep: int = 2) -> Path:
    """Write `step_{step}.pt`, point `latest` at it, and prune.

    Pruning, only once the new file and pointer are in place, keeps the newest `keep` checkpoints up to
    `step` (the default 2: this one and its predecessor, a fallback; all when `keep` <= 0), and removes any
    from later steps: those belong to a run this one has superseded (a fresh start or an older resume).
    It also removes the temporary files of a writer that was killed mid-write (each as big as a checkpoint).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step}.pt"
    try:
        _atomic_save(state, path)
        # Only after the file is complete: a failed write leaves `latest` on the previous checkpoint.
        _atomic_write_text(path.name + "\n", ckpt_dir / LATEST)
    except (RuntimeError, OSError, ClipforgeError) as e:  # ClipforgeError: atomic_path's full-disk line
        raise ClipforgeError(_write_failure(ckpt_dir, e, _tensor_bytes(state))) from None
    files = step_files(ckpt_dir)
    older = sorted(s for s in files if s <= step)
    doomed = [s for s in files if s > step] + (older[:-keep] if keep > 0 else [])
    for s in doomed:
        files[s].unlink(missing_ok=True)
    for stale in ckpt_dir.glob(".step_*.tmp*"):  # atomic_path's names; only this run's rank 0 writes here
        stale.unlink(missing_ok=True)
    return path


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the highest-step one present, else None."""
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        target = ckpt_dir / pointer.read_text().strip()
        if target.is_file():
            return target
    files = step_files(ckpt_dir)
    return files[max(files)] if files else None


def resolve_resume(resume: str | os.PathLike | None, out_dir: Path) -> Path | None:
    """The checkpoint file a `resume` argument means: None, "latest" (None if there is none), a file or a folder."""
    if resume is None:
        return None
    if str(resume) == LATEST:
        return latest_checkpoint(out_dir / CHECKPOINT_DIR)
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / CHECKPOINT_DIR)
        if found is not None:
            return found
    raise ClipforgeError(f"no checkpoint to resume from at {path}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU) with the safe `weights_only` unpickler."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated, or pickled code the safe unpickler refuses
        reason = first_line(e)
        raise ClipforgeError(f"cannot read checkpoint {path}: {reason[:200]}") from None
