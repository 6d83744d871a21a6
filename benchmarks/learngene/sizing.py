"""How long the full width-gap run takes here: a tiny probe of every member's step time, and the arithmetic.

    python -m benchmarks.learngene.sizing [--steps 6] [--plateau-steps 1600] [--downstream] [--cpu-time]

Times `--steps` optimizer steps (after one warm-up step) of every member under InfoNCE / LiT-style
pre-training (PT-FT, Scratch) and under KD read through the teacher cache (the ancestry-initialised
methods), and, with `--downstream`, one downstream seed per kind; then adds up the full default run: phase A
(PT-FT of every member for `--plateau-steps` steps: the sizing probe's narrow CLIP of depth 2 plateaued at
1,600; the others are assumed alike), the two extractions, phase B (every method × point × member at its
FLOP-matched steps), the curve evaluations and the downstream seeds, for one process and for N shards.
Prints a table and the totals (the README quotes them). Needs no GPU; writes nothing but --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import harness

DOWNSTREAM_GUESS_S = {"clip": 8.0, "vision": 6.0, "text": 4.0}  # per seed, when --downstream is not given


class Clock:
    """Seconds of a block: CPU time of this process (`--cpu-time`, what an idle core would take for a
    single-thread process, whatever else runs on the machine) or wall time."""

    cpu = False

    def __enter__(self) -> Clock:
        self.t0 = time.process_time() if Clock.cpu else time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = (time.process_time() if Clock.cpu else time.perf_counter()) - self.t0


def _infonce(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """A CLIP's InfoNCE step, as `train()` runs it by default."""
    from clipforge.learngene.distill import _embed
    from clipforge.train.loss import ClipLoss

    img, txt = _embed(model, batch)
    return ClipLoss()(img, txt, model.logit_scale), {}


def _time_steps(model: torch.nn.Module, step: Any, batch: dict, steps: int) -> float:
    """Median seconds of one optimizer step of `step` on `batch`."""
    step = step or _infonce
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):
        with Clock() as c:
            loss, _ = step(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(c.seconds)
    times = sorted(times[1:])
    return times[len(times) // 2]


def probe(bench: Any, steps: int, downstream: bool) -> dict[str, dict[str, float]]:
    """{member: {"infonce": s, "kd": s, "eval": s, "downstream": s}} measured on this machine."""
    from clipforge.learngene.distill import TeacherCache, teacher_cache

    from .methods import KD_RECIPE, initialise
    from .pretraining import step_for

    cache = TeacherCache(bench.ancestry)
    out: dict[str, dict[str, float]] = {}
    with teacher_cache(cache):
        cache.outputs(bench.probe, torch.device("cpu"))
        for m in bench.members:
            model, _ = initialise("scratch", m, learngenes={}, ancestry=bench.ancestry, shape=bench.shape, k=1,
                                  probe_batch=bench.probe)
            rec = {"infonce": _time_steps(model, step_for(m, None, bench.ancestry), bench.probe, steps),
                   "kd": _time_steps(model, step_for(m, KD_RECIPE, bench.ancestry), bench.probe, steps)}
            with Clock() as c:
                bench.curve(model)
            rec["eval"] = c.seconds
            if downstream:
                with Clock() as c:
                    bench.downstream_seed(model, m, f"sizing-{m.name}", 0)
                rec["downstream"] = c.seconds
            else:
                rec["downstream"] = DOWNSTREAM_GUESS_S[m.kind]
            out[m.name] = rec
            print(f"[sizing] {m.name}: {rec['infonce']:.3f} s/step InfoNCE, {rec['kd']:.3f} KD, eval "
                  f"{rec['eval']:.1f} s, downstream {rec['downstream']:.1f} s/seed", flush=True)
    return out


def arithmetic(bench: Any, times: dict[str, dict[str, float]], plateau_steps: int, shards: int) -> dict[str, Any]:
    """Expected seconds of every phase of the full default run, given the probe's step times."""
    from .costs import extraction_steps, member_budgets, shares, steps_for
    from .methods import LEARNGENE_METHODS, METHODS, pretrain_objective
    from .plan import Unit, assign

    b, members = bench.b, bench.members
    per_sample = {m.name: bench.per_sample(m, None) for m in members}
    ptft_flops = {n: plateau_steps * b.batch_size * f for n, f in per_sample.items()}
    C = sum(ptft_flops.values())
    sh = shares(ptft_flops)
    evals = plateau_steps // b.eval_every
    a_units = [Unit(f"ptft-{m.name}", "A", plateau_steps * times[m.name]["infonce"] + evals * times[m.name]["eval"])
               for m in members]
    ext = extraction_steps(b.ancestry_samples, b.extract_fraction, b.batch_size)
    clip_kd = sum(times[f"clip-d{d}"]["kd"] for d in b.depths) / len(b.depths)
    a_units += [Unit(f"extract-{mode}", "A", ext * clip_kd * 1.15 + b.extract_evals * 2.0)  # Aux-Net overhead
                for mode in LEARNGENE_METHODS]
    avg_kd = sum(bench.per_sample(m, pretrain_objective("mmlg", b.fd_beta)) for m in members if m.kind == "clip")
    ext_flops = ext * b.batch_size * avg_kd / len(b.depths)
    b_units, steps_total = [], 0
    for p, F, methods in (("r", C / b.ratio, METHODS), ("c", C, b.methods_at_c)):
        for method in methods:
            obj = pretrain_objective(method, b.fd_beta)
            budgets = member_budgets(F, ext_flops if method in LEARNGENE_METHODS else 0.0, sh)
            for m in members:
                steps = steps_for(budgets[m.name], b.batch_size * bench.per_sample(m, obj))
                steps_total += steps
                t = steps * times[m.name]["kd" if obj is not None else "infonce"] + (b.curve_points + 1) * \
                    times[m.name]["eval"]
                b_units.append(Unit(f"{method}-{p}-{m.name}", "B", t))
    down = {u.name: len(b.seeds) * times["-".join(u.name.rsplit("-", 2)[-2:])]["downstream"]
            for u in a_units + b_units if not u.name.startswith("extract-")}
    a_units = [Unit(u.name, u.phase, u.cost + down.get(u.name, 0.0)) for u in a_units]
    b_units = [Unit(u.name, u.phase, u.cost + down.get(u.name, 0.0)) for u in b_units]

    def span(units: list[Unit]) -> float:
        where = assign(units, shards)
        return max(sum(u.cost for u in units if where[u.name] == k) for k in range(shards))

    return {"C_tflop": C / 1e12, "extraction_steps": ext, "extraction_share_of_C_over_ratio": ext_flops / (C / b.ratio),
            "phase_b_units": len(b_units), "phase_b_steps": steps_total,
            "downstream_s": sum(down.values()), "one_process_s": sum(u.cost for u in a_units + b_units),
            f"{shards}_shards_s": span(a_units) + span(b_units), "phase_a_span_s": span(a_units),
            "phase_b_span_s": span(b_units)}


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.learngene.sizing [flags]`: prints the probe and the arithmetic."""
    p = harness.parser("learngene", __doc__, "sizing")
    p.add_argument("--ancestry", type=Path, help="ancestry (default: the cached demo ancestry)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-learngene-sizing"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--plateau-steps", type=int, default=1600)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--downstream", action="store_true", help="time one downstream seed per member too")
    p.add_argument("--cpu-time", action="store_true", help="time in CPU seconds of this process (a single-thread "
                                                            "process's time on an idle core), not wall seconds")
    p.add_argument("--methods-at-c", help="comma-separated methods also run at F = C (default: the budget's)")
    p.add_argument("--json", type=Path, help="write the probe's times and the arithmetic here")
    args = p.parse_args(argv)
    Clock.cpu = args.cpu_time
    harness.set_threads(args.threads)
    from dataclasses import replace

    from clipforge.files import write_json

    from .bench import Bench
    from .budget import Budget

    ns = argparse.Namespace(ancestry=args.ancestry, quick=False, work=args.work, out=args.work / "results",
                            overwrite=True, shard=None)
    budget = Budget()
    if args.methods_at_c:
        budget = replace(budget, methods_at_c=tuple(args.methods_at_c.split(",")))
    bench = Bench(ns, budget)
    times = probe(bench, args.steps, args.downstream)
    res = arithmetic(bench, times, args.plateau_steps, args.shards)
    if args.json:
        write_json(args.json, {"times": times, "arithmetic": res, "cpu_time": args.cpu_time,
                               "budget": budget.to_dict(), "machine": harness.machine()})
    for k, v in res.items():
        print(f"[sizing] {k}: {v / 60:.1f} min" if k.endswith("_s") else f"[sizing] {k}: {v:,.3f}" if
              isinstance(v, float) else f"[sizing] {k}: {v:,}")
    print(f"[sizing] machine: {harness.machine_line(harness.machine())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
