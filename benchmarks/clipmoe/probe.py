"""A tiny timing probe that sizes the benchmark: seconds per training sample of every kind of run at the
budget's batch and stretched context, of the MCL embedding pass and of one evaluation, on one thread; then
every unit's expected wall time and the wall time of two 1-thread processes sharing the units.

    python -m benchmarks.clipmoe.probe [--steps 3] [--threads 1] [--note "what else ran"]

A few steps each (after one warm-up step), the median kept. Other jobs on the machine inflate the numbers;
its load average is recorded beside them. Writes results/probe.json (README.md, "Sizing", quotes it).
"""

from __future__ import annotations

import fnmatch
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .. import harness
from .bench import Bench, Budget
from .units import expected_seconds, plan

KINDS = {"ffn": ["*.mlp.fc1.*", "*.mlp.fc2.*"], "full": None, "router": ["*.mlp.router.*"],
         "upcycle": ["*.mlp.router.*", "*.mlp.experts.*"]}


def step_seconds(model: Any, batches: list[dict[str, Any]], trainable: list[str] | None) -> float:
    """Median seconds of a training step (forward, symmetric InfoNCE, backward, AdamW) over `batches[1:]`."""
    import torch

    for name, p in model.named_parameters():
        p.requires_grad = trainable is None or any(fnmatch.fnmatch(name, q) for q in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    times = []
    for batch in batches:
        t = time.perf_counter()
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        logits, labels = 100.0 * img @ txt.T, torch.arange(len(img))
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T,
                                                                                                     labels)) / 2
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def measure(bench: Bench, steps: int) -> dict[str, float]:
    """Per-sample seconds of each kind of training step and of the embedding pass; seconds per evaluation."""
    import torch

    from clipforge.models import io
    from clipforge.moe.embedding import embed_dataset
    from clipforge.moe.mcl import _default_collate
    from clipforge.moe.pack import upcycle

    from . import evalset

    b = bench.b
    base = io.load(bench.base_dir())
    collate = _default_collate(base)
    data = bench.data
    batches = [collate([data[(k * b.batch + i) % len(data)] for i in range(b.batch)]) for k in range(steps + 1)]
    moe = upcycle(base, num_experts=b.experts, top_k=b.top_k, seed=0)
    out = {}
    for kind, patterns in KINDS.items():
        out[kind] = step_seconds(moe if kind in ("router", "upcycle") else base, batches, patterns) / b.batch
    n = min(len(data), 512)
    sub = torch.utils.data.Subset(data, range(n))
    t = time.perf_counter()
    embed_dataset(base, sub, batch_size=256, progress=False)
    out["embed"] = (time.perf_counter() - t) / n
    # one evaluation at a tenth of every set, times ten (its cost is linear in the items)
    small = evalset.build(max(1, b.eval_scenes // 10), max(1, b.eval_pairs // 10),
                          (b.eval_fashion or 10_000) // 10, bench.image_size)
    for key, model in (("eval", base), ("eval_moe", moe)):
        t = time.perf_counter()
        evalset.metrics(evalset.embed(model, small), small)
        out[key] = 10 * (time.perf_counter() - t)
    return out


def lanes(seconds: dict[str, float], order: list[str], processes: int = 2) -> list[float]:
    """Each process's total when `processes` take the units in `order`, each the next one free (the runner's
    rule): a unit goes to the process that is free first."""
    load = [0.0] * processes
    for name in order:
        load[load.index(min(load))] += seconds[name]
    return load


def main(argv: list[str] | None = None) -> int:
    """Measure, predict, write results/probe.json and print the sizing table."""
    p = harness.parser("clipmoe", __doc__, "probe")
    p.add_argument("--steps", type=int, default=3, help="timed steps per kind (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as each benchmark process)")
    p.add_argument("--ancestry", type=Path, help="ancestry model (default: the cached demo ancestry)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-clipmoe-probe"), help="where the stretched base goes")
    p.add_argument("--out", type=Path, default=harness.results_dir("clipmoe") / "probe.json")
    p.add_argument("--note", help="what else ran on the machine meanwhile")
    args = p.parse_args(argv)
    harness.set_threads(args.threads)
    budget = Budget()
    bench = Bench(budget, harness.resolve_ancestry(args.ancestry, False), args.work)
    m = harness.machine(args.note)
    costs = measure(bench, args.steps)
    seconds = expected_seconds(budget, costs)
    order = [u.name for u in plan(budget)]
    two = lanes(seconds, order)
    rec = {"command": harness.command("clipmoe", sys.argv[1:] if argv is None else argv, "probe"), "machine": m,
           "load_average_after": harness.machine()["load_average"], "budget": budget.derived(), "costs": costs,
           "units_s": seconds, "total_s": sum(seconds.values()), "two_processes_s": two}
    from clipforge.files import write_json

    write_json(args.out, rec)
    for name in order:
        print(f"{name:34s} {seconds[name] / 60:6.1f} min")
    print(f"costs (s per sample; s per evaluation): { {k: round(v, 4) for k, v in costs.items()} }")
    print(f"total {sum(seconds.values()) / 60:.0f} min on one thread; two 1-thread processes: "
          f"{max(two) / 60:.0f} min (lanes {[round(x / 60) for x in two]}); load average {m['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
