"""Which units a process runs: the phases' unit lists, their estimated cost, and shards.

Two phases: (A) PT-FT of every member to its plateau and the extractions (independent of each other);
(B) every method at every compute point on every member (needs C, from all of A). `--shard K/N` runs the
units the longest-processing-time rule gives shard K (the same deterministic split in every process),
waits for the records of the others it depends on, and only shard 0 writes the results, so N
single-thread processes on N cores share one run. Records land in the same `results/units/`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from clipforge.errors import ClipforgeError


@dataclass(frozen=True)
class Unit:
    """One unit of work: its record name, its phase and its estimated cost (FLOPs actually computed)."""

    name: str
    phase: str
    cost: float


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`"0/2"` → (0, 2); None stays None."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ClipforgeError(f"--shard {text!r}: expected K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise ClipforgeError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def assign(units: list[Unit], shards: int) -> dict[str, int]:
    """{unit name: shard}: costliest first, each to the least-loaded shard (ties: the lower shard)."""
    load = [0.0] * shards
    out = {}
    for u in sorted(units, key=lambda u: (-u.cost, u.name)):
        k = min(range(shards), key=lambda i: (load[i], i))
        out[u.name] = k
        load[k] += u.cost
    return out


def mine(units: list[Unit], shard: tuple[int, int] | None) -> set[str]:
    """The names of the units this process runs (all of them without shards)."""
    if shard is None:
        return {u.name for u in units}
    k, n = shard
    return {name for name, s in assign(units, n).items() if s == k}


def wait_for(names: list[str], has: Callable[[str], bool], what: str, poll_s: float = 15.0) -> None:
    """Block until every record in `names` exists (written by another shard), saying what it waits for."""
    missing = [n for n in names if not has(n)]
    said = 0.0
    while missing:
        now = time.monotonic()
        if now - said > 300:
            print(f"[bench] waiting for {len(missing)} {what} record(s) from the other shard(s): "
                  f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}", flush=True)
            said = now
        time.sleep(poll_s)
        missing = [n for n in missing if not has(n)]
