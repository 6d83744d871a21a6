"""MM-LG benchmark, cost-matched: descendants of three depths from the demo ancestry, every method at the
same family FLOPs, against PT-FT pre-trained to a plateau.

    python -m benchmarks.learngene.run            # full (budgets in budget.py); resumable units
    python -m benchmarks.learngene.run --quick    # smoke test (tiny ancestry), used by the tests

Phases: (1) PT-FT per depth to its plateau, whose FLOPs sum to C; (2) MM-LG extractions with each
recipe, the best (by its descendants' quality at step 0) also for TLEG-per-tower and Shared-only;
(3) every method at F = C / ratio and the `methods_at_c` at F = C, with the downstream tasks per seed.
Protocol: README.md beside this file, and written into results.md. Each finished unit is a committed
record under results/units/ (benchmarks.harness.Units): rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from clipforge.cost import Timer
from clipforge.errors import ClipforgeError
from clipforge.models.params import count_params
from clipforge.train.plateau import Plateau

from .. import harness
from . import report
from .bench import NAME, Bench, Learngenes
from .budget import Budget
from .costs import depth_shares, family_cost, steps_for, storage
from .methods import (
    ALL,
    INHERIT_METHODS,
    LEARNGENE_METHODS,
    METHODS,
    block_parameters,
    initialise,
    pretrain_objective,
    uses_sws_schedule,
)
from .tasks import SCORE


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones and its own."""
    harness.add_common(p, NAME)
    p.add_argument("--seeds", type=int, help="number of downstream seeds (default 3, quick 1)")


def ptft_phase(bench: Bench) -> dict[int, dict]:
    """PT-FT: every depth from random init to its plateau; their FLOPs sum to C."""
    b, ptft = bench.b, {}
    prog = harness.Progress("PT-FT", len(bench.depths))
    rule = Plateau(SCORE, b.plateau_patience, b.plateau_delta)
    for d in bench.depths:
        name = f"ptft-d{d}"
        cached = bench.units.has(name)
        ptft[d] = bench.run_unit(name, lambda d=d: initialise("ptft", d, learngenes={}, ancestry=bench.ancestry,
                                                          shape_of=bench.shape_of, k=b.heur_k,
                                                          probe_batch=bench.probe),
                                 b.ptft_max_steps, None, False, until=rule)
        prog.tick(f"depth {d}: {ptft[d]['steps']} steps, score {ptft[d]['curve'][-1][1][SCORE]:.3f}", cached)
    return ptft


def extraction_phase(bench: Bench, budget_flops: float) -> tuple[dict[str, dict], str]:
    """MM-LG with every recipe, then the best recipe (by step-0 descendants) for the other learngene methods."""
    b, extractions = bench.b, {}
    prog = harness.Progress("extract", len(b.recipes) + len(LEARNGENE_METHODS) - 1)
    for r in b.recipes:
        cached = bench.units.has(f"extract-mmlg-{r}")
        extractions[f"mmlg/{r}"] = bench.extraction("mmlg", r, budget_flops)
        prog.tick(f"mmlg {r}: {extractions[f'mmlg/{r}']['steps']} steps, descendants' score "
                  f"{extractions[f'mmlg/{r}']['selection_score']:.3f}", cached)
    best = max(b.recipes, key=lambda r: extractions[f"mmlg/{r}"]["selection_score"])
    print(f"[bench] extraction recipe: {best} (highest mean step-0 descendant score)", flush=True)
    for m in LEARNGENE_METHODS[1:]:
        cached = bench.units.has(f"extract-{m}-{best}")
        extractions[f"{m}/{best}"] = bench.extraction(m, best, budget_flops)
        prog.tick(f"{m} {best}", cached)
    return extractions, best


def runs_phase(bench: Bench, points: dict[str, float], shares: dict[int, float], chosen: dict[str, dict],
               learngenes: Learngenes) -> dict[str, dict[str, dict[int, dict]]]:
    """Every method at F = C / ratio, the `methods_at_c` at F = C: {point: {method: {depth: unit}}}."""
    b = bench.b
    runs: dict[str, dict[str, dict[int, dict]]] = {p: {} for p in points}
    plan = [(p, m) for p in points for m in (METHODS if p == "C/ratio" else b.methods_at_c)]
    prog = harness.Progress("runs", len(plan) * len(bench.depths))
    for p, m in plan:
        objective, sws = pretrain_objective(m, b.fd_beta), uses_sws_schedule(m)
        avail = points[p] - (chosen[m]["flops"] if m in LEARNGENE_METHODS else 0)
        for d in bench.depths:
            name = f"{m}-{'c' if p == 'C' else 'c-over-ratio'}-d{d}"
            steps = steps_for(max(avail, 0.0) * shares[d], bench.flops_per_step(d, bool(objective)))
            cached = bench.units.has(name)
            runs[p].setdefault(m, {})[d] = bench.run_unit(
                name, lambda m=m, d=d: initialise(m, d, learngenes=learngenes, ancestry=bench.ancestry,
                                                  shape_of=bench.shape_of, k=b.heur_k, probe_batch=bench.probe),
                steps, objective, sws, evals=b.curve_points)
            prog.tick(f"{m} at {p}, depth {d}: {steps} steps", cached)
    return runs


def assemble(bench: Bench, args: argparse.Namespace, ptft: dict[int, dict], runs: dict, points: dict[str, float],
             shares: dict[int, float], extractions: dict[str, dict], best: str) -> dict[str, Any]:
    """results.json's record from the units: costs, storage, the machine and what made it."""
    ancestry, b = bench.ancestry, bench.b
    chosen = {m: extractions[f"{m}/{best}"] for m in LEARNGENE_METHODS}
    anc_counts = count_params(ancestry)
    ptft_store = {"total": sum(u["params"] for u in ptft.values()),
                  "blocks": sum(u["block_params"] for u in ptft.values())}
    lg_params = {m: chosen[m]["learngene_parameters"] for m in LEARNGENE_METHODS}
    anc_store = {"total": anc_counts["total"], "blocks": block_parameters(ancestry)}
    costs = {"PT-FT": {"ptft": family_cost("ptft", ptft, None)}}
    for p in points:
        costs[p] = {m: family_cost(m, r, chosen.get(m)) for m, r in runs[p].items()}
    m = harness.machine(args.note)
    return {
        "quick": bool(args.quick), "command": args.command, "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": m["gpu"] or f"CPU ({m['cpu']}, {m['threads']} threads), torch {m['torch']}", "machine": m,
        "budget": b.to_dict(), "C_flops": sum(u["flops"] for u in ptft.values()), "points": points,
        "depth_shares": {str(d): v for d, v in shares.items()},
        "ancestry": {"recipe": bench.recipe, "weights_sha256": bench.weights, "params": anc_counts["total"],
                     "depth": ancestry.config.vision_config.num_hidden_layers,
                     "quality": chosen["mmlg"]["auxnet_quality"]["ancestry"]},
        "ptft": {str(d): u for d, u in ptft.items()},
        "runs": {p: {m: {str(d): u for d, u in r.items()} for m, r in rp.items()} for p, rp in runs.items()},
        "extractions": extractions, "recipe": best, "costs": costs,
        "storage": {m: storage(m, lg_params, ptft_store, anc_store) for m in ALL},
        "units_reused": sorted(bench.units.reused),
        "inherit_methods": list(INHERIT_METHODS), "learngene_methods": list(LEARNGENE_METHODS),
    }


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the benchmark and write results.json, results.md and the PNGs."""
    harness.set_threads(args.threads)
    t_start = time.perf_counter()
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    bench = Bench(args, budget)
    phases: dict[str, float] = {"data pools": bench.data_seconds}
    with Timer() as t:
        ptft = ptft_phase(bench)
    phases["PT-FT"] = t.seconds
    C = sum(u["flops"] for u in ptft.values())
    shares = depth_shares({d: u["flops"] for d, u in ptft.items()})
    points = {"C/ratio": C / budget.ratio, "C": C}
    print(f"[bench] C = {C / 1e12:.2f} TFLOP (PT-FT family); F = C/{budget.ratio} = {C / budget.ratio / 1e12:.2f} "
          "TFLOP", flush=True)
    ext_flops = budget.extract_share * C / budget.ratio  # one extraction's budget
    with Timer() as t:
        extractions, best = extraction_phase(bench, ext_flops)
    phases["extraction"] = t.seconds
    chosen = {m: extractions[f"{m}/{best}"] for m in LEARNGENE_METHODS}
    with Timer() as t:
        runs = runs_phase(bench, points, shares, chosen, Learngenes(bench, best, ext_flops))
    phases["runs"] = t.seconds
    results = assemble(bench, args, ptft, runs, points, shares, extractions, best)
    results["phase_wall_time_s"] = phases
    results["summary"] = report.summarise(results, bench.depths, bench.seeds)
    results["verdicts"] = report.verdicts(results)
    results["wall_time_s"] = time.perf_counter() - t_start
    out = harness.out_dir(args, NAME)
    harness.write_results(out, results, report.render)
    for v in results["verdicts"]:
        print(v["line"])
    print(f"[bench] done in {results['wall_time_s'] / 60:.1f} min ({len(bench.units.reused)} units from records): "
          f"{out / 'results.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.learngene.run [flags]`; 0 on success, 2 on a clipforge error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = harness.parser(NAME, __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = harness.command(NAME, argv)
    try:
        return run(args)
    except ClipforgeError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
