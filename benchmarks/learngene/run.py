"""MM-LG benchmark, width-gap protocol: a nine-member family (CLIP, vision, text × three depths) at two thirds of
the ancestry's widths, every method at the same family FLOPs, against PT-FT pre-trained to a plateau.

    python -m benchmarks.learngene.run                   # full (budgets in budget.py); resumable units
    python -m benchmarks.learngene.run --shard 0/2 & python -m benchmarks.learngene.run --shard 1/2
    python -m benchmarks.learngene.run --quick           # smoke test (tiny ancestry), used by the tests

Phases: (A) PT-FT of every member to its plateau (its FLOPs sum to C) and one extraction per learngene
method at the family's widths; (B) every method at F = C / ratio and the `methods_at_c` at F = C, with the
downstream task of each member's kind per seed. Protocol: README.md beside this file, and written into
results.md. Each finished unit is a committed record under results/units/ (benchmarks.harness.Units):
rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from clipforge.cost import Timer, forward_flops
from clipforge.errors import ClipforgeError
from clipforge.learngene.distill import teacher_cache
from clipforge.models.params import count_params
from clipforge.train.plateau import Plateau

from .. import harness
from . import report
from .bench import NAME, Bench, Learngenes
from .budget import Budget
from .costs import extraction_steps, family_cost, member_budgets, parameter_split, shares, steps_for, storage
from .family import Member, describe
from .methods import ALL, LEARNGENE_METHODS, METHODS, initialise, named_counts, pretrain_objective, uses_sws_schedule
from .plan import Unit, mine, parse_shard, wait_for
from .tasks import SCORE
from .teacher import cached_teacher

PTFT_STEPS_GUESS = 1600  # only orders the units between shards (the sizing probe's narrow CLIP of depth 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones and its own."""
    harness.add_common(p, NAME)
    p.add_argument("--seeds", type=int, help="number of downstream seeds (default 2, quick 1)")
    p.add_argument("--shard", help="K/N: run shard K of N side by side (N single-thread processes; shard 0 writes "
                                   "the results)")
    p.add_argument("--partial", action="store_true",
                   help="write results.md now from the unit records present, running nothing: each claim over the "
                        "members both of its methods have, the missing units listed (for a run that another "
                        "machine, one that trains the same ancestry weights, must finish)")
    p.add_argument("--keep-models", action="store_true", help="keep every pre-trained member under the work "
                                                              "directory (default: removed once its seeds are done)")


def student_flops(bench: Bench, member: Member) -> float:
    """FLOPs a step of `member` computes per sample (the ancestry's embeddings come from the cache)."""
    return 3 * forward_flops(bench.config_of(member), member.kind, bench.tokens)


def make(bench: Bench, method: str, member: Member, learngenes: dict) -> Any:
    return lambda: initialise(method, member, learngenes=learngenes, ancestry=bench.ancestry, shape=bench.shape,
                              k=bench.b.auto_k, probe_batch=bench.probe)


def phase_a(bench: Bench, shard: tuple[int, int] | None, ext_steps: int) -> tuple[dict, dict]:
    """PT-FT of every member to its plateau, and the extractions: ({member: record}, {mode: record})."""
    b = bench.b
    avg = sum(student_flops(bench, Member("clip", d)) for d in b.depths) / len(b.depths)
    units = [Unit(f"ptft-{m.name}", "A", PTFT_STEPS_GUESS * student_flops(bench, m)) for m in bench.members]
    units += [Unit(f"extract-{mode}", "A", ext_steps * avg) for mode in LEARNGENE_METHODS]
    todo = mine(units, shard)
    rule = Plateau(SCORE, b.plateau_patience, b.plateau_delta)
    prog = harness.Progress("phase A", len(todo))
    for u in sorted((u for u in units if u.name in todo), key=lambda u: (-u.cost, u.name)):
        cached = bench.units.has(u.name)
        if u.name.startswith("extract-"):
            rec = bench.extraction(u.name[len("extract-"):], ext_steps)
            prog.tick(f"{u.name}: {rec['steps']} steps", cached)
            continue
        m = Member.parse(u.name[len("ptft-"):])
        rec = bench.run_unit(u.name, m, make(bench, "ptft", m, {}), b.ptft_max_steps, None, False, until=rule,
                             warmup=b.ptft_warmup)
        prog.tick(f"{u.name}: {rec['steps']} steps ({'plateau' if rec['stopped_early'] else 'CAP'})", cached)
    wait_for([u.name for u in units], lambda n: bench.units.get(n) is not None, "phase A")
    ptft = {m.name: bench.units.get(f"ptft-{m.name}") for m in bench.members}
    return ptft, {mode: bench.units.get(f"extract-{mode}") for mode in LEARNGENE_METHODS}


def phase_b_units(bench: Bench, points: dict[str, float], member_shares: dict[str, float],
                  extractions: dict[str, dict]) -> list[tuple[Unit, str, str, Member, int]]:
    """(unit, point, method, member, steps) of every budgeted run."""
    b, out = bench.b, []
    for p, methods in (("C/ratio", METHODS), ("C", b.methods_at_c)):
        for method in methods:
            objective = pretrain_objective(method, b.fd_beta)
            ext = extractions[method]["flops"] if method in LEARNGENE_METHODS else 0.0
            budgets = member_budgets(points[p], ext, member_shares)
            for m in bench.members:
                steps = steps_for(budgets[m.name], b.batch_size * bench.per_sample(m, objective))
                name = f"{method}-{'c' if p == 'C' else 'c-over-ratio'}-{m.name}"
                out.append((Unit(name, "B", steps * b.batch_size * student_flops(bench, m)), p, method, m, steps))
    return out


def phase_b(bench: Bench, shard: tuple[int, int] | None, plan: list, learngenes: Learngenes) -> None:
    """Every budgeted run this process owns, costliest first."""
    todo = mine([u for u, *_ in plan], shard)
    prog = harness.Progress("phase B", len(todo))
    for u, p, method, m, steps in sorted((x for x in plan if x[0].name in todo), key=lambda x: (-x[0].cost, x[0].name)):
        cached = bench.units.has(u.name)
        objective = pretrain_objective(method, bench.b.fd_beta)
        bench.run_unit(u.name, m, make(bench, method, m, learngenes), steps, objective, uses_sws_schedule(method),
                       evals=bench.b.curve_points)
        prog.tick(f"{method} at {p}, {m.name}: {steps} steps", cached)


def complete(bench: Bench, name: str) -> bool:
    rec = bench.units.get(name)
    return rec is not None and all(str(s) in rec["downstream"] for s in bench.seeds)


def assemble(bench: Bench, args: argparse.Namespace, ptft: dict, plan: list, points: dict[str, float],
             member_shares: dict[str, float], extractions: dict[str, dict], ext_steps: int) -> dict[str, Any]:
    """results.json's record from the units: costs, storage, the family and what made it."""
    b = bench.b
    runs: dict[str, dict[str, dict[str, dict]]] = {p: {} for p in points}
    for u, p, method, m, _ in plan:
        rec = bench.units.get(u.name)  # None only in a --partial report
        runs[p].setdefault(method, {}).update({m.name: rec} if rec is not None else {})
    ptft_params = [r["parameters"] for r in ptft.values()]
    kept = {"ptft": {k: sum(x[k] for x in ptft_params) for k in ptft_params[0]},
            "ancestry": parameter_split(named_counts(bench.ancestry)),
            **{f"learngene:{mode}": e["parameters"] for mode, e in extractions.items()}}
    costs = {"PT-FT": {"ptft": family_cost(ptft, None)}}
    for p in points:
        costs[p] = {m: family_cost(r, extractions.get(m)) for m, r in runs[p].items()}
    mach = harness.machine(args.note)
    return {
        "quick": bool(args.quick), "command": args.command, "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": mach["gpu"] or f"CPU ({mach['cpu']}, {mach['threads']} threads), torch {mach['torch']}",
        "machine": mach, "shard": getattr(args, "shard", None), "budget": b.to_dict(),
        "members": [m.name for m in bench.members], "family_shape": describe(bench.shape),
        "C_flops": sum(u["flops"] for u in ptft.values()), "points": points, "member_shares": member_shares,
        "ancestry": {"recipe": bench.recipe, "weights_sha256": bench.weights,
                     "params": count_params(bench.ancestry)["total"],
                     "depth": bench.ancestry.config.vision_config.num_hidden_layers,
                     "shape": {t: [getattr(bench.ancestry.config, f"{t}_config").num_hidden_layers,
                                   getattr(bench.ancestry.config, f"{t}_config").hidden_size]
                               for t in ("vision", "text")},
                     "quality": extractions["mmlg"]["auxnet_quality"]["ancestry"]},
        "ptft": ptft, "runs": runs, "extractions": extractions, "extraction_steps": ext_steps,
        "costs": costs, "storage": {m: storage(m, kept) for m in ALL}, "kept": kept,
        "text_task": {k: v for k, v in bench.text_test.items() if k not in ("texts", "labels")},
        "pool": {"name": bench.pool.name, "samples": len(bench.pool), "tokens_per_sample": bench.tokens},
        "units_reused": sorted(bench.units.reused), "learngene_methods": list(LEARNGENE_METHODS),
    }


def partial(bench: Bench, args: argparse.Namespace, t_start: float) -> int:
    """results.json, results.md and the PNGs from the records present, running nothing; the missing units listed."""
    b = bench.b
    ext_steps = extraction_steps(b.ancestry_samples, b.extract_fraction, b.batch_size)
    names = [f"ptft-{m.name}" for m in bench.members] + [f"extract-{mode}" for mode in LEARNGENE_METHODS]
    if absent := [n for n in names if bench.units.get(n) is None]:
        raise ClipforgeError(f"--partial: phase A has no record of {', '.join(absent)}: C is not known yet")
    ptft = {m.name: bench.units.get(f"ptft-{m.name}") for m in bench.members}
    extractions = {mode: bench.units.get(f"extract-{mode}") for mode in LEARNGENE_METHODS}
    points, member_shares = family_points(ptft, b.ratio)
    plan = phase_b_units(bench, points, member_shares, extractions)
    missing = [u.name for u, *_ in plan if not complete(bench, u.name)]
    results = assemble(bench, args, ptft, plan, points, member_shares, extractions, ext_steps)
    results["partial"] = {"units": len(plan) + len(names), "missing": missing,
                          "ancestry_here": harness.ancestry_record(bench.anc_path)["weights_sha256"]}
    results["teacher_cache"] = {"rows": 2 * len(bench.pool), "built": False}
    results["phase_wall_time_s"] = {"data pools": bench.data_seconds}
    out = finish(bench, args, results, t_start)
    print(f"[bench] partial report of {results['partial']['units'] - len(missing)} of {results['partial']['units']} "
          f"units ({len(missing)} missing): {out / 'results.md'}")
    return 0


def family_points(ptft: dict[str, dict], ratio: float) -> tuple[dict[str, float], dict[str, float]]:
    """The compute points {"C/ratio", "C"} (C: PT-FT's family FLOPs) and each member's share of C."""
    C = sum(u["flops"] for u in ptft.values())
    return {"C/ratio": C / ratio, "C": C}, shares({name: u["flops"] for name, u in ptft.items()})


def finish(bench: Bench, args: argparse.Namespace, results: dict[str, Any], t_start: float) -> Path:
    """Summary and verdicts into `results`, then results.json, results.md and the PNGs; the verdicts printed."""
    results["summary"] = report.summarise(results, bench.seeds)
    results["verdicts"] = report.verdicts(results)
    results["wall_time_s"] = time.perf_counter() - t_start
    out = harness.out_dir(args, NAME)
    harness.write_results(out, results, report.render)
    for v in results["verdicts"]:
        print(v["line"])
    return out


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the benchmark; shard 0 (or the only process) writes results.json, results.md, PNGs."""
    harness.set_threads(args.threads)
    t_start = time.perf_counter()
    shard = parse_shard(getattr(args, "shard", None))
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    bench = Bench(args, budget)
    if args.partial:
        return partial(bench, args, t_start)
    phases: dict[str, float] = {"data pools": bench.data_seconds}
    context = bench.ancestry.config.text_config.max_position_embeddings
    cache, cache_rec = cached_teacher(bench.ancestry, bench.pool, context, bench.work)
    phases["teacher cache"] = cache_rec["seconds"]
    ext_steps = extraction_steps(budget.ancestry_samples, budget.extract_fraction, budget.batch_size)
    with teacher_cache(cache):
        with Timer() as t:
            ptft, extractions = phase_a(bench, shard, ext_steps)
        phases["phase A (PT-FT, extraction)"] = t.seconds
        points, member_shares = family_points(ptft, budget.ratio)
        print(f"[bench] C = {points['C'] / 1e12:.2f} TFLOP (PT-FT family); F = C/{budget.ratio} = "
              f"{points['C/ratio'] / 1e12:.2f} TFLOP", flush=True)
        plan = phase_b_units(bench, points, member_shares, extractions)
        with Timer() as t:
            phase_b(bench, shard, plan, Learngenes(bench, ext_steps))
        phases["phase B (budgeted runs)"] = t.seconds
    if shard is not None and shard[0] != 0:
        print(f"[bench] shard {shard[0]}/{shard[1]} done in {(time.perf_counter() - t_start) / 60:.1f} min; "
              "shard 0 writes the results")
        return 0
    wait_for([u.name for u, *_ in plan] + [f"ptft-{m.name}" for m in bench.members],
             lambda n: complete(bench, n), "unit")
    ptft = {m.name: bench.units.get(f"ptft-{m.name}") for m in bench.members}
    results = assemble(bench, args, ptft, plan, points, member_shares, extractions, ext_steps)
    results["teacher_cache"] = {**cache_rec, **cache.describe()}
    results["phase_wall_time_s"] = phases
    out = finish(bench, args, results, t_start)
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
