"""Run directories that know what made them: claim a directory for some settings, finish once, resume.

A run directory holds `settings.json` (the kind of run, e.g. `train` or `moe dmu`, and the settings
that decide its result), the training run (`log.jsonl`, `checkpoints/`) and, when finished, `model/`
(written atomically, so its presence means "done"). Every command claims its output directory here:
rerunning with the same kind and settings skips a finished run and resumes an interrupted one from its
last checkpoint; another kind, other settings or a directory of other files is an error that names what
differs, and only `--overwrite` replaces it. Never a silent mix, never a run lost.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError
from ..files import write_json
from .checkpoint import CHECKPOINT_DIR, latest_checkpoint

SETTINGS = "settings.json"
MODEL = "model"


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


def read_claim(run_dir: str | Path) -> tuple[str | None, Any] | None:
    """(kind, settings) recorded in `run_dir`, or None when it holds no claim. Files written before runs
    recorded their kind give kind None."""
    path = Path(run_dir) / SETTINGS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: not valid JSON ({e}); pass --overwrite to start over") from None
    if isinstance(data, dict) and set(data) == {"kind", "settings"}:
        return data["kind"], data["settings"]
    return None, data


def claim(run_dir: str | Path, settings: dict[str, Any], force: bool = False, *, kind: str = "run") -> bool:
    """Own `run_dir` for a run of `kind` with `settings`; True when it resumes an earlier claim.

    A directory claimed by another kind of run, by other settings, or holding files but no claim is
    refused with one line naming what differs; `force` (the CLI's `--overwrite`) replaces it.
    """
    run_dir = Path(run_dir)
    settings = normalise(settings)
    if run_dir.exists() and not run_dir.is_dir():
        raise ClipforgeError(f"{run_dir} is a file, not a run directory; choose another output directory")
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    old = read_claim(run_dir)
    if old is not None:
        old_kind, old_settings = old
        if old_kind is not None and old_kind != kind:
            raise ClipforgeError(f"{run_dir} holds a `{old_kind}` run, not a `{kind}` run; pass --overwrite "
                                 "to replace it or choose another output directory")
        if old_settings != settings:
            fields = ", ".join(_diff(old_settings, settings)[:6])
            raise ClipforgeError(f"{run_dir} holds a `{kind}` run made with other settings ({fields}); "
                                 "pass --overwrite to replace it or choose another output directory")
        if old_kind is None:  # upgrade a claim written before runs recorded their kind
            write_json(run_dir / SETTINGS, {"kind": kind, "settings": settings})
        return True
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ClipforgeError(f"{run_dir} is not empty and holds no clipforge run ({SETTINGS}); pass --overwrite "
                             "to replace it or choose another output directory")
    write_json(run_dir / SETTINGS, {"kind": kind, "settings": settings})
    return False


def finished(run_dir: str | Path, settings: dict[str, Any] | None = None) -> bool:
    """True if `run_dir/model` is complete (and, if given, was made with `settings`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL / "config.json").is_file():
        return False
    if settings is None:
        return True
    old = read_claim(run_dir)
    return old is not None and old[1] == normalise(settings)


def had_checkpoint(run_dir: str | Path) -> bool:
    """True if an interrupted training run left a checkpoint in `run_dir`."""
    return latest_checkpoint(Path(run_dir) / CHECKPOINT_DIR) is not None


def train_run(model, dataset, run_dir: str | Path, cfg, settings: dict[str, Any], provenance: dict[str, Any],
              *, collate_fn=None, step_fn=None, batch_sampler=None, eval_fn=None, force: bool = False,
              progress: bool = True, keep_checkpoints: bool = False, kind: str = "train"):
    """Train `model` in `run_dir` once and save it to `run_dir/model`; returns the trained model.

    A finished run with the same `settings` is loaded instead of retrained; an interrupted one
    resumes from its latest checkpoint (bit-exact on the CPU). `cfg` is a `TrainConfig`; the
    checkpoints are removed once the model is saved unless `keep_checkpoints`.
    """
    from ..models import io
    from . import distributed as D
    from .loop import train

    run_dir = Path(run_dir)
    if not force and finished(run_dir, settings):
        return io.load(run_dir / MODEL)
    if D.rank() == 0:
        claim(run_dir, settings, force, kind=kind)
    D.barrier()
    resume = "latest" if had_checkpoint(run_dir) else None
    model = train(model, dataset, cfg, run_dir, batch_sampler=batch_sampler, collate_fn=collate_fn,
                  step_fn=step_fn, eval_fn=eval_fn, resume=resume, progress=progress)
    if D.rank() == 0:
        io.save(model, run_dir / MODEL, provenance={**provenance, "settings": normalise(settings)})
        if not keep_checkpoints:
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    D.barrier()
    return model.eval()


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a run's `log.jsonl` ([] if absent; a truncated last line from a killed run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
