"""Run directories that know what made them: claim a directory for some settings, finish once, resume.

A run directory holds `settings.json` (what decides its result), the training run (`log.jsonl`,
`checkpoints/`) and, when finished, `model/` (written atomically, so its presence means "done").
Rerunning with the same settings skips a finished run and resumes an interrupted one from its last
checkpoint; other settings are an error that names the differing fields, never a silent mix.
"""

from __future__ import annotations

import json
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


def claim(run_dir: str | Path, settings: dict[str, Any], force: bool = False) -> None:
    """Own `run_dir` for `settings`: a run with other settings there is an error (or wiped with `force`)."""
    run_dir = Path(run_dir)
    settings = normalise(settings)
    path = run_dir / SETTINGS
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    elif path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            fields = ", ".join(_diff(old, settings)[:6])
            raise ClipforgeError(f"{run_dir} holds a run made with other settings ({fields}); "
                                 "pass --force to start over or choose another output directory")
    write_json(path, settings)


def finished(run_dir: str | Path, settings: dict[str, Any] | None = None) -> bool:
    """True if `run_dir/model` is complete (and, if given, was made with `settings`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL / "config.json").is_file():
        return False
    if settings is None:
        return True
    path = run_dir / SETTINGS
    return path.is_file() and json.loads(path.read_text()) == normalise(settings)


def had_checkpoint(run_dir: str | Path) -> bool:
    """True if an interrupted training run left a checkpoint in `run_dir`."""
    return latest_checkpoint(Path(run_dir) / CHECKPOINT_DIR) is not None


def train_run(model, dataset, run_dir: str | Path, cfg, settings: dict[str, Any], provenance: dict[str, Any],
              *, collate_fn=None, step_fn=None, batch_sampler=None, eval_fn=None, force: bool = False,
              progress: bool = True, keep_checkpoints: bool = False):
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
        claim(run_dir, settings, force)
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
