"""CLIP-MoE benchmark in the paper's regime: the alt-text ancestry fine-tuned on new dense-caption scenes.

The paper fine-tunes OpenAI's CLIP (trained on short web alt-text) on ShareGPT4V's long dense captions:
there direct fine-tuning raises retrieval and loses zero-shot ImageNet, and CLIP-MoE keeps both. Here the
demo ancestry trained on `alt` captions is fine-tuned on new scenes with `dense` captions (docs/methods.md
A.7); the same-distribution protocol of the first wave is kept as a control in results/same_distribution/.

    python -m benchmarks.clipmoe.run            # full (budgets in bench.py)
    python -m benchmarks.clipmoe.run --quick    # smoke test (tiny ancestry, one seed), used by the tests

Main table (paper Tables 2, 4, 5), every method fine-tuned on the same held-out-seed scenes with the
same number of optimizer steps T = (E-1)·S + R and the same global batch:
  base, direct FT (FFN-only), direct FT (full), sparse upcycling (E copies, experts + routers trained),
  w/o MCL (2 experts: base + direct-FT FFN, routers R steps), CLIP-MoE (E-1 MCL stages of S steps, routers R).
Table 1: every dense MCL stage model's MMVP-style pair accuracy per attribute.
Ablation: one MCL stage against direct FT with the same steps and parameters, over cluster counts,
stage length and what MCL trains, with paired differences and their standard errors across seeds.
Fig. 3: routing heat map of the CLIP-MoE.

Every unit (a method at a seed) is a resumable run directory under --work, and every finished seed a
committed record in results/units/ (benchmarks.harness.Units); results are rebuilt from them, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import harness
from . import report
from .bench import Bench, Budget, wall_time

NAME = "clipmoe"
# per method and seed: the unit's evaluation record (plus wall time and clusters for the trained ones)
Table = dict[str, dict[int, dict[str, Any]]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones and its own."""
    harness.add_common(p, NAME)
    p.add_argument("--seeds", type=int, help="number of seeds (default 3, quick 1)")
    p.add_argument("--seed", type=int, dest="only_seed",
                   help="run only this seed's units and write its unit record (two 1-thread processes, one per "
                        "seed, share --work); results are written by a run without --seed, which reuses the records")
    p.add_argument("--part", choices=["all", "main", "ablation"], default="all",
                   help="run only the main table's units or only the ablation's (two processes can share --work); "
                        "results are written by `all` (default), which reuses every finished unit")


def seed_units(bench: Bench, seed: int) -> Table:
    """Every main-table method at one seed, trained (or found in the work directory) and evaluated."""
    b = bench.b
    units: Table = {}

    def record(method: str, model_dir: Path, **extra: Any) -> None:
        units.setdefault(method, {})[seed] = {**bench.evaluate(model_dir), "wall_time_s": wall_time(model_dir),
                                              **extra}

    for k, name in ((b.k, "CLIP-MoE"), (b.k_small, f"CLIP-MoE ({b.k_small}x{b.k_small})")):
        print(f"[bench] seed {seed}: {name} ({b.experts - 1} MCL stages x {b.stage_steps} steps, {k}x{k} "
              f"clusters, + routers {b.router_steps})", flush=True)
        moe_dir = bench.clip_moe(seed, k)
        record(name, moe_dir, clusters=bench.cluster_report(moe_dir.parent))
    moe_dir = bench.work / "clip_moe" / f"seed{seed}" / "model"
    for j in range(1, b.experts):
        units.setdefault(f"stage{j}", {})[seed] = bench.evaluate(moe_dir.parent / "mcl" / f"stage{j}" / "model",
                                                                 mmvp_only=True)
    print(f"[bench] seed {seed}: direct FT (FFN, full) {b.total_steps} steps", flush=True)
    for name, params in (("direct FT (FFN)", "ffn"), ("direct FT (full)", "full")):
        record(name, bench.direct_ft(f"direct_ft_{params}", seed, b.total_steps, params))
    print(f"[bench] seed {seed}: sparse upcycling, w/o MCL", flush=True)
    record("sparse upcycling", bench.sparse_upcycling(seed))
    record("w/o MCL", bench.without_mcl(seed, bench.work / "direct_ft_ffn" / f"seed{seed}" / "model"))
    return units


def main_table(bench: Bench, seeds: list[int], records: harness.Units, run_info: dict[str, Any]
               ) -> tuple[Table, dict[int, Any]]:
    """The main table's units of `seeds`, each seed from its record when one matches, else trained and recorded;
    and how each seed's record was made."""
    import torch

    units: Table = {}
    seed_runs: dict[int, Any] = {}
    for seed in seeds:
        saved = records.get(f"seed{seed}")
        if saved is not None:  # a committed unit record: this seed is done (perhaps on another machine)
            print(f"[bench] seed {seed}: reusing {records.path(f'seed{seed}')}", flush=True)
        else:
            t0 = time.perf_counter()
            per_seed = {m: rec[seed] for m, rec in seed_units(bench, seed).items()}
            saved = records.put(f"seed{seed}", {"seed": seed, "units": per_seed, "run": {
                "wall_time_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(), **run_info}})
        for method, rec in saved["units"].items():
            units.setdefault(method, {})[seed] = rec
        seed_runs[seed] = saved.get("run")
    return units, seed_runs


def ablation(bench: Bench) -> dict[str, Any]:
    """One MCL stage against direct FT with the same steps and trainable parameters, per setting and seed."""
    b = bench.b
    out: dict[str, Any] = {}
    for name, k, mult, attn in b.ablation:
        steps = b.stage_steps * mult
        params = "ffn+attention" if attn else "ffn"
        for seed in b.seeds:
            print(f"[bench] ablation {name}, seed {seed}", flush=True)
            main_stage = bench.work / "clip_moe" / f"seed{seed}" / "mcl" / "stage1" / "model"
            if k == b.k and mult == 1 and not attn and (main_stage / "config.json").is_file():
                sdir = main_stage  # the same settings as the main run's stage 1: the same model
            else:
                sdir = bench.stage(name, seed, k, steps, attn)
            rdir = bench.direct_ft(f"ablation_ref/{params}_{steps}", seed, steps, params)
            a = out.setdefault(name, {"k": k, "steps": steps, "trains": params, "stage": {}, "direct_ft": {},
                                      "reference": f"direct FT ({params}, {steps} steps)"})
            a["stage"][seed] = bench.evaluate(sdir)["headline"]
            a["direct_ft"][seed] = bench.evaluate(rdir)["headline"]
    return out


def _seed_records(out: Path, budget: Budget, ancestry: Path) -> harness.Units:
    """The committed per-seed records; their identity is the budget (all seeds alike) and the ancestry."""
    identity = {"budget": asdict(budget) | {"seeds": None}, "ancestry": harness.ancestry_record(ancestry)}
    # records written before harness.Units held the seed's fields at the top level
    return harness.Units(out / "units", identity, legacy=lambda rec: {k: rec.get(k) for k in ("seed", "units", "run")})


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the benchmark and write results.json, results.md and the plots."""
    from clipforge.demo.ancestry import display_path

    harness.set_threads(args.threads)
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    only = args.only_seed
    if only is not None and only not in budget.seeds:
        print(f"python -m benchmarks.clipmoe.run: error: --seed {only} is not one of the budget's seeds "
              f"{list(budget.seeds)} (see --seeds)", file=sys.stderr)
        return 2
    out, work = harness.out_dir(args, NAME), harness.work_dir(args, NAME)
    ancestry = harness.resolve_ancestry(args.ancestry, args.quick)
    harness.claim_work(work, NAME, {"budget": asdict(budget) | {"seeds": None}, "ancestry": str(ancestry.resolve())},
                       args.overwrite)
    started = time.perf_counter()
    bench = Bench(budget, ancestry, work)
    base_eval = bench.base_eval()
    seeds = [s for s in budget.seeds if only is None or s == only] if args.part in ("all", "main") else []
    units, seed_runs = main_table(bench, seeds, _seed_records(out, budget, ancestry), {"command": args.command})
    abl = ablation(bench) if args.part in ("all", "ablation") and only is None else {}
    if args.part != "all" or only is not None:
        what = f"seed {only}" if only is not None else f"part {args.part}"
        print(f"[bench] {what} finished; run without --part / --seed to write the results", flush=True)
        return 0
    results = report.build(budget, units, base_eval, abl, display_path(work), args.command,
                           round(time.perf_counter() - started, 1), display_path(ancestry),
                           routing=report.routing(budget, work, out))
    results["seed_runs"] = seed_runs
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
