"""CLIP-MoE benchmark v2 (issue 33): the paper's protocol in miniature, on the demo ancestry, SE-aware verdicts.

    python -m benchmarks.clipmoe.run                 # every unit; results in benchmarks/clipmoe/results/
    python -m benchmarks.clipmoe.run --quick         # the whole protocol at toy sizes (tests/test_bench_clipmoe.py)
    # on 2 cores: two 1-thread processes share the units (each takes the next one nobody holds)
    python -m benchmarks.clipmoe.run --threads 1 & python -m benchmarks.clipmoe.run --threads 1

The ancestry (alt-text with 15 % full and 5 % dense captions) is fine-tuned on new scenes with dense captions,
its text positions Long-CLIP-stretched to the pool's longest caption for every method alike. CLIP-MoE: E − 1
MCL stages of one sampler epoch each, clusters per stage sized so that a last-stage cluster holds about two
global batches, routers for one epoch. Baselines: direct FT of the FFNs and of everything at T = 3S + R
(compute-matched) and at S (data-matched per expert), sparse upcycling at T, w/o MCL as the same pipeline with
one cluster per stage; the experts' embedding mean as an upper bound; CLIP-MoE with the logit scale fixed at the
base's learned value. A diagnostic fine-tunes five parameter sets. Every unit leaves a committed record in
results/units/; a rerun (here or on another machine) does only the units without one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import harness
from . import report
from .bench import Bench, Budget, file_lock
from .units import Unit, plan, run_units

NAME = "clipmoe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones and its own."""
    harness.add_common(p, NAME)
    p.add_argument("--seeds", type=int, help="number of seeds of the main table (default 3, quick 1)")
    p.add_argument("--seed", type=int, dest="only_seed",
                   help="run only this seed's units (and the shared ones); results are written once every unit "
                        "of the protocol has its record")
    p.add_argument("--part", choices=["all", "main", "diagnostic"], default="all",
                   help="run only the main table's units or only the diagnostic's (and the shared ones)")


def identity(budget: Budget, ancestry: Path) -> dict[str, Any]:
    """What a unit record must match to be reused: the protocol, the budget and the ancestry's weights."""
    return {"protocol": "v2", "budget": budget.identity(), "ancestry": harness.ancestry_record(ancestry)}


def check_work(work: Path, ident: dict[str, Any], overwrite: bool) -> str | None:
    """Claim `work` for these settings (processes with the same settings share it); a message when it holds
    another run's, unless `overwrite` discards it."""
    from clipforge.run import normalise

    path = work / "bench.json"
    with file_lock(work.parent / f".{work.name}.bench.lock"):
        other = not path.is_file() and work.is_dir() and any(work.iterdir())  # another benchmark's (v1's) files
        if other or (path.is_file() and normalise(json.loads(path.read_text())) != normalise(ident)):
            if not overwrite:
                return f"--work {work} holds a run with other settings; pass --overwrite to discard it"
            shutil.rmtree(work)
        if not path.is_file():
            work.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ident, indent=1, sort_keys=True))
    return None


def select(units: list[Unit], part: str, seed: int | None) -> list[Unit]:
    """The units `--part` and `--seed` ask for (the shared ones always)."""
    return [u for u in units if u.part == "shared" or ((part == "all" or u.part == part)
                                                      and (seed is None or u.seed == seed))]


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the benchmark; once every unit has a record, write results.json, results.md, plots."""
    from clipforge.demo.ancestry import display_path

    harness.set_threads(args.threads)
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    if args.only_seed is not None and args.only_seed not in set(budget.seeds) | set(budget.diag_seeds):
        print(f"python -m benchmarks.clipmoe.run: error: --seed {args.only_seed} is not one of the budget's seeds "
              f"{list(budget.seeds)} (see --seeds)", file=sys.stderr)
        return 2
    if args.work is None:  # not v1's runs/bench-clipmoe: its run directories have the same names
        args.work = Path(f"runs/bench-{NAME}-v2{'-quick' if args.quick else ''}")
    out, work = harness.out_dir(args, NAME), harness.work_dir(args, NAME)
    ancestry = harness.resolve_ancestry(args.ancestry, args.quick)
    ident = identity(budget, ancestry)
    problem = check_work(work, ident, args.overwrite)
    if problem:
        print(f"python -m benchmarks.clipmoe.run: error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    from clipforge.errors import ClipforgeError

    records = harness.Units(out / "units", ident)
    try:
        records.refuse_foreign(args.overwrite)
    except ClipforgeError as e:  # records of another ancestry or budget: not this run's to replace
        print(f"python -m benchmarks.clipmoe.run: error: {e}", file=sys.stderr)
        return 2
    bench = Bench(budget, ancestry, work)
    units = plan(budget)
    run_units(bench, select(units, args.part, args.only_seed), records, {"command": args.command})
    done = {u.name: records.get(u.name) for u in units}
    missing = [n for n, r in done.items() if r is None]
    if missing:
        print(f"[bench] {len(missing)} unit(s) of the protocol have no record yet ({', '.join(missing[:4])}...); "
              "run without --seed / --part to finish them and write the results", flush=True)
        return 0
    with file_lock(work / ".results.lock"):
        results = report.build(budget, {n: r for n, r in done.items() if r is not None}, units, args.command,
                               round(time.perf_counter() - started, 1), display_path(ancestry))
        results["machine"] = harness.machine(args.note)
        harness.write_results(out, results, report.render)
    print((out / "results.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.clipmoe.run [flags]`; 0 on success."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = harness.parser(NAME, __doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    args.command = harness.command(NAME, argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
