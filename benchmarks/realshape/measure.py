"""One CLI command in its own process, measured: wall time, CPU time, peak RSS, disk (peak and final).

The command runs as `python -m clipforge ...` (the CLI entry point, `clipforge.cli.main`) in a child process,
so its peak resident memory is its own: `os.wait4` returns the child's `ru_maxrss` (its own and that of any
child it waited for, e.g. DataLoader workers: the largest of them, not their sum). While it runs, a thread
sums the allocated size of the files under its output directory every `DISK_EVERY` seconds: the peak of
those samples is the disk it held at most (a sampled peak: a file that lived less than the interval may be
missed); the final size is taken once the command has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DISK_EVERY = 0.5  # seconds between disk samples


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk by the files under `root` (as `du` counts them; links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            # (a file renamed or removed between the listing and the stat counts nothing)
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def apparent_bytes(root: Path) -> int:
    """The files' sizes under `root` (what a copy would transfer)."""
    return sum(p.lstat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


class DiskPeak(threading.Thread):
    """Samples `disk_bytes` of the directories `roots` until `stop()`."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peak, self.samples = roots, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(DISK_EVERY)

    def sample(self) -> None:
        size = sum(disk_bytes(r) for r in self.roots if r.exists())
        self.peak, self.samples = max(self.peak, size), self.samples + 1

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.sample()
        return self.peak


def clipforge_command(args: list[str]) -> list[str]:
    """The argv that runs `clipforge ARGS` with this interpreter."""
    return [sys.executable, "-m", "clipforge", *args]


def run_measured(args: list[str], outputs: list[Path], log: Path, threads: int | None = None) -> dict[str, Any]:
    """Run `clipforge ARGS` in a child process (stdout and stderr into `log`), measured.

    `outputs`: the directories the command writes (their disk use is sampled). Raises RuntimeError with
    the log's tail if the command fails.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = clipforge_command(args)
    log.parent.mkdir(parents=True, exist_ok=True)
    disk = DiskPeak(outputs)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        disk.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # (reaped here: Popen must not wait again)
    peak_disk = disk.stop()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"`clipforge {' '.join(args)}` exited with {proc.returncode}; the end of {log}:\n{tail}")
    return {"argv": ["clipforge", *args], "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
            "disk_bytes": sum(disk_bytes(p) for p in outputs if p.exists()),
            "disk_apparent_bytes": sum(apparent_bytes(p) for p in outputs if p.exists()),
            "peak_disk_bytes": peak_disk, "disk_samples": disk.samples, "log": str(log)}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a training run's log.jsonl (none if it is missing)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def step_times(log: Path) -> dict[str, Any] | None:
    """A training phase's step timing from its log.jsonl: steps, seconds in the training loop, seconds per step
    (all steps) and per step after the first logged one (without the first step's warm-up, where the log has
    two rows or more); None without a log."""
    rows = [r for r in read_log(log) if "elapsed_s" in r and "step" in r]
    if not rows:
        return None
    last = rows[-1]
    out = {"steps": last["step"], "train_s": last["elapsed_s"], "s_per_step": last["elapsed_s"] / last["step"]}
    if len(rows) >= 2 and last["step"] > rows[0]["step"]:
        out["s_per_step_after_first"] = (last["elapsed_s"] - rows[0]["elapsed_s"]) / (last["step"] - rows[0]["step"])
    return out


def code_state() -> dict[str, Any]:
    """The commit the code was at and whether src/ had uncommitted changes (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    changed = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "--short=12", "HEAD"), "src_changed": None if changed is None else bool(changed)}


def brief(rec: dict[str, Any]) -> str:
    parts = []
    if "wall_s" in rec:
        parts.append(f"{rec['wall_s']:.1f} s")
    if "s_per_step" in rec:
        parts.append(f"{rec['s_per_step']:.2f} s/step")
    if "peak_rss_bytes" in rec:
        parts.append(f"peak RSS {rec['peak_rss_bytes'] / 2**30:.2f} GiB")
    if "disk_bytes" in rec:
        parts.append(f"disk {rec['disk_bytes'] / 2**30:.2f} GiB")
    if "max_abs_diff" in rec:
        parts.append(f"max |Δ| {rec['max_abs_diff']:.1e}, pass {rec['all_pass']}")
    return ", ".join(parts)
