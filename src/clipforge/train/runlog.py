"""`out_dir/log.jsonl`: the training loop's log, one JSON object a line, written by rank 0 only.

A fresh run starts it empty; a resumed run first drops the lines past its checkpoint (written by a run
that died before its next checkpoint), so the log always describes the run that continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from torch import Tensor


class RunLog:
    """log.jsonl open for appending (a no-op on ranks that do not log); each line is flushed at once."""

    def __init__(self, path: Path | None = None, resumed_step: int | None = None) -> None:
        """`path` None: this rank does not log. `resumed_step`: the checkpoint's step, None for a fresh run."""
        self._file: TextIO | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            path.write_text("")
        else:
            _trim(path, resumed_step)
        self._file = open(path, "a")  # noqa: SIM115 - held open across write() calls until close()

    def write(self, record: dict[str, Any]) -> None:
        """One line, flushed so a crash loses none of it."""
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def scalar(v: Any) -> Any:
    """A logged value as JSON takes it: a tensor becomes a number (one element) or a list."""
    if isinstance(v, Tensor):
        return v.detach().float().item() if v.numel() == 1 else v.detach().float().tolist()
    return v


def _trim(path: Path, last_step: int) -> None:
    """Drop log lines past `last_step` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
    path.write_text("".join(k + "\n" for k in kept))
