"""Unit records: one small JSON per finished unit of work, committed with the results.

A unit (PT-FT at one depth, one extraction, one method at one compute point and depth with its
downstream seeds) is written to `results/units/<name>.json` the moment it finishes, with the identity
of the benchmark (budget and ancestry recipe). A rerun, on this machine or another, reuses every record
whose identity matches, so a later session redoes only what is missing; model weights live in the
work directory and are rebuilt (deterministically, from the same seeds) when a record needs more
downstream seeds than it holds and the weights are gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from clipforge.files import write_json
from clipforge.run import normalise


class Units:
    """`units.get(name)` → the record or None; `units.put(name, record)` writes it atomically.

    `canonical` maps a stored identity to the form `identity` is written in, so that records written in
    an older layout of the same identity (e.g. a flat ancestry recipe) still count."""

    def __init__(self, root: Path, identity: dict[str, Any], canonical: Callable[[dict], dict] | None = None) -> None:
        self.root, self.identity = root, normalise(identity)
        self.canonical = canonical or (lambda d: d)
        self.reused: set[str] = set()
        self.t0 = time.perf_counter()

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.root / f"{name}.json"
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        try:
            same = normalise(self.canonical(rec.get("identity") or {})) == self.identity
        except Exception:  # a layout this version cannot read: not the same identity
            same = False
        if not same:
            return None
        return rec["unit"]

    def has(self, name: str) -> bool:
        """Whether a matching record exists (counted as reused)."""
        if self.get(name) is None:
            return False
        self.reused.add(name)
        return True

    def put(self, name: str, unit: dict[str, Any]) -> dict[str, Any]:
        write_json(self.root / f"{name}.json", {"identity": self.identity, "name": name, "unit": unit})
        return unit


class Progress:
    """One line per unit of work, with the elapsed time and a naive ETA for the phase."""

    def __init__(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.t0 = phase, total, 0, time.perf_counter()

    def tick(self, what: str, skipped: bool = False) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        note = "from its record" if skipped else f"{elapsed:.0f} s in phase, ~{eta:.0f} s left"
        print(f"[bench] {self.phase} {self.done}/{self.total} {what} ({note})", flush=True)
