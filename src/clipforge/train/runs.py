"""Training inside a run directory: `train_run` trains once, saves `run_dir/model`, resumes when rerun.

The run lifecycle itself (claim, lock, done / resume / refuse, finish) is `clipforge.run.Run`; this
module adds what training needs on top of it, and reads a run's `log.jsonl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..run import Run
from .checkpoint import CHECKPOINT_DIR, latest_checkpoint

MODEL = "model"


def had_checkpoint(run_dir: str | Path) -> bool:
    """True if an interrupted training run left a checkpoint in `run_dir`."""
    return latest_checkpoint(Path(run_dir) / CHECKPOINT_DIR) is not None


def train_run(model, dataset, run: Run | str | Path, cfg, settings: dict[str, Any], provenance: dict[str, Any],
              *, collate_fn=None, step_fn=None, batch_sampler=None, eval_fn=None, force: bool = False,
              progress: bool = True, keep_checkpoints: bool = False, kind: str = "train",
              inputs: Iterable[Any] = ()):
    """Train `model` in a run directory once and save it to `run_dir/model`; returns the trained model.

    `run`: a directory (a `Run` of `kind` for `settings` is made and finished here) or a `Run` the caller
    has entered and finishes itself (a method whose run holds more than this training). A finished run
    is loaded instead of retrained; an interrupted one resumes from its latest checkpoint (bit-exact on
    the CPU). `cfg` is a `TrainConfig`.
    """
    if isinstance(run, Run):
        return _train_in(run, model, dataset, cfg, provenance, collate_fn, step_fn, batch_sampler, eval_fn,
                         progress, keep_checkpoints)
    with Run(run, kind, settings, overwrite=force, inputs=inputs) as r:
        model = _train_in(r, model, dataset, cfg, provenance, collate_fn, step_fn, batch_sampler, eval_fn,
                          progress, keep_checkpoints)
        if not r.done:
            r.finish(keep_checkpoints=keep_checkpoints)
    return model


def _train_in(run: Run, model, dataset, cfg, provenance, collate_fn, step_fn, batch_sampler, eval_fn,
              progress: bool, keep_checkpoints: bool):
    from .. import distributed as D
    from ..models import io
    from .loop import train

    if run.done:
        return io.load(run.out / MODEL)
    resume = "latest" if had_checkpoint(run.dir) else None
    model = train(model, dataset, cfg, run.dir, batch_sampler=batch_sampler, collate_fn=collate_fn,
                  step_fn=step_fn, eval_fn=eval_fn, resume=resume, progress=progress)
    if D.rank() == 0:
        io.save(model, run.dir / MODEL, provenance={**provenance, "settings": run.settings})
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
