"""A ten-minute GPU check: clipforge's training step against a bare transformers loop, its MoE layer against two
dense FFNs, its evaluation throughput, and router-training memory with and without activation checkpointing.

    python -m benchmarks.gpu.run [--quick] [--out DIR] [--device auto|cpu|cuda] [--threads N] [--only UNIT ...]
                                 [--train-batch B] [--router-batch B] [--steps N] [--warmup N] [--redo]

Units, each one record `<out>/<device-tag>/<unit>.json`, reused by a rerun with the same plan:

  train_step            a B/16-shaped CLIP step under amp "auto" (bf16 on CUDA): clipforge's `train()` against a
                        bare transformers loop on the same synthetic batch; ms/step, samples/s, peak memory, ratios
  moe_layer             clipforge's MoE FFN (4 experts, top-2; sparse and grouped dispatch) against two dense FFNs
                        (top-2's active compute): forward + backward ms and ratios
  eval_throughput       images/s and texts/s of clipforge.eval.embed's embed_images / embed_texts at B/16
  router_checkpointing  peak memory of a ViT-L/14-shaped CLIP-MoE (4 experts, top-2, every block) router-training
                        step, activation checkpointing off and on, and their ratio

Every part runs in a measuring process of its own (peaks are its own); one that runs out of memory records
"out of memory at batch B". `--quick`: tiny shapes, every unit on the CPU in well under a minute
(tests/test_benchmark_gpu.py). Writes results.json and results.md beside the unit records.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import harness
from .plan import Plan, make_plan

NAME = "gpu"
# unit -> its parts: (label, part function in parts.py, options); each part is one measuring process
UNITS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "train_step": [("clipforge", "train", {"loop": "clipforge"}), ("bare", "train", {"loop": "bare"})],
    "moe_layer": [("layers", "moe", {})],
    "eval_throughput": [("embed", "eval", {})],
    "router_checkpointing": [("plain", "router", {"checkpointing": False}),
                             ("checkpointed", "router", {"checkpointing": True})],
}
# What a CPU's measuring processes import once, in the fork server (each part then starts in well under a second).
PRELOAD = ["torch", "transformers", "benchmarks.gpu.parts", "clipforge.eval.embed",
           "clipforge.models.clip_moe.modeling_clip_moe", "clipforge.moe.routers"]


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None where either is missing (a part that ran out of memory)."""
    return a / b if a is not None and b else None


def combine(unit: str, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The unit's record: its parts, and the ratios computed from their figures."""
    if unit == "train_step":
        a, b = parts["clipforge"], parts["bare"]
        return {**parts, "ratio_ms": ratio(a.get("median_ms"), b.get("median_ms")),
                "ratio_samples_per_s": ratio(a.get("samples_per_s"), b.get("samples_per_s")),
                "ratio_peak_memory": ratio(a.get("peak_memory_bytes"), b.get("peak_memory_bytes"))}
    if unit == "moe_layer":
        rec = parts["layers"]
        ms = rec.get("ms", {})
        return {**rec, "ratio_sparse_over_two_dense": ratio(ms.get("sparse"), ms.get("two_dense")),
                "ratio_grouped_over_two_dense": ratio(ms.get("grouped"), ms.get("two_dense")),
                "ratio_grouped_over_sparse": ratio(ms.get("grouped"), ms.get("sparse"))}
    if unit == "router_checkpointing":
        off, on = parts["plain"], parts["checkpointed"]
        return {**parts, "ratio_peak_memory": ratio(on.get("peak_memory_bytes"), off.get("peak_memory_bytes")),
                "ratio_ms": ratio(on.get("median_ms"), off.get("median_ms"))}
    return parts["embed"]


def part_batch(plan: Plan, part: str) -> int | None:
    """The batch a part runs at (what an out-of-memory record names)."""
    return {"train": plan.train_batch, "moe": plan.moe_batch, "eval": plan.eval_image_batch,
            "router": plan.router_batch}.get(part)


class Launcher:
    """Starts each part in a measuring process: forked from a server that imported torch and clipforge once (a
    CPU), or a fresh interpreter (CUDA: a fork server is no place to risk touching the driver)."""

    def __init__(self, method: str, threads: int, note: str | None) -> None:
        self.ctx = mp.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(PRELOAD)
        self.method, self.threads, self.note = method, threads, note

    def run(self, part: str, plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
        opts = {**opts, "threads": self.threads, "note": self.note, "batch": part_batch(plan, part)}
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(part, plan, opts, send), daemon=True)
        proc.start()
        send.close()
        try:
            result = receive.recv()
        except EOFError:  # it died without a word (killed for memory, a crash in a kernel)
            result = None
        proc.join()
        if result is None:
            return {"error": f"the measuring process exited with {proc.exitcode} before reporting"}
        return result


def _child(part: str, plan: Plan, opts: dict[str, Any], conn: Any) -> None:
    """A measuring process's entry (here, so that the launcher itself never imports the measuring code)."""
    from .parts import child_main

    child_main(part, plan, opts, conn)


def device_tag(info: dict[str, Any]) -> str:
    """The results folder's name: the GPU's name (nvidia-h100-80gb-hbm3), or cpu-<the processor's name>."""
    name = info.get("gpu") if info["device"] == "cuda" else f"cpu-{info['machine']['cpu']}"
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")[:60] or info["device"]


def measure_unit(unit: str, plan: Plan, launcher: Launcher, progress: harness.Progress) -> dict[str, Any]:
    """Every part of `unit`, each in its own process; `{"error": ...}` where a part failed other than by memory."""
    parts = {}
    for label, part, opts in UNITS[unit]:
        t0 = time.perf_counter()
        rec = launcher.run(part, plan, opts)
        if "error" in rec and not rec.get("oom"):
            print(rec.get("traceback", ""), file=sys.stderr)
            return {"error": f"{label}: {rec['error']}"}
        parts[label] = {**rec, "process_wall_s": round(time.perf_counter() - t0, 2)}
        progress.tick(f"{unit}/{label}: {brief(rec)}")
    return combine(unit, parts)


def brief(rec: dict[str, Any]) -> str:
    """One part's figures in a few words, for the progress line."""
    if rec.get("oom"):
        return rec["error"]
    bits = []
    if "median_ms" in rec:
        bits.append(f"{rec['median_ms']:.1f} ms/step, {rec['samples_per_s']:.1f} samples/s")
    if "peak_memory_bytes" in rec:
        bits.append(f"peak {rec['peak_memory_bytes'] / 2**30:.2f} GiB ({rec['memory_kind']})")
    if "ms" in rec:
        bits.append(", ".join(f"{k} {v:.2f} ms" for k, v in rec["ms"].items()))
    if "images_per_s" in rec:
        bits.append(f"{rec['images_per_s']:.0f} images/s, {rec['texts_per_s']:.0f} texts/s")
    return "; ".join(bits)


def parse(argv: list[str]) -> argparse.Namespace:
    p = harness.parser(NAME, __doc__)
    harness.add_common(p, NAME, work=False, ancestry=False, threads="every core; 1 with --quick")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to measure (default auto: CUDA when available; --quick: the CPU unless given)")
    p.add_argument("--only", nargs="+", choices=list(UNITS), help="measure only these units")
    p.add_argument("--redo", action="store_true", help="measure again units that have a record")
    p.add_argument("--train-batch", type=int, help="train_step batch (default 128 on CUDA, 8 on a CPU, quick 8)")
    p.add_argument("--router-batch", type=int, help="router_checkpointing batch (default 32 on CUDA, 2 on a CPU, "
                                                    "quick 4)")
    p.add_argument("--steps", type=int, help="timed steps of train_step and moe_layer (default 20, quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (default 3, quick 1)")
    p.add_argument("--workers", type=int, help="embed_images DataLoader workers (default min(8, cores) on CUDA)")
    p.add_argument("--start-method", choices=["auto", "forkserver", "spawn"], default="auto",
                   help="how measuring processes start (default auto: forkserver on a CPU, spawn on CUDA)")
    return p.parse_args(argv)


def resolve_device(choice: str, quick: bool) -> str:
    """cpu or cuda for --device (auto: CUDA when available, except with --quick)."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m benchmarks.gpu.run: --device cuda, but torch sees no CUDA device")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() and not quick else "cpu"
    return choice


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.gpu.run [flags]`; 0 when every unit has a record, 1 when one failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    t0 = time.perf_counter()
    device = resolve_device(args.device, args.quick)
    # --quick: one thread; tiny shapes gain nothing from more, and a smoke test shares the machine.
    threads = args.threads or (1 if args.quick else harness.all_cores())
    plan = make_plan(args.quick, device, harness.all_cores(), train_batch=args.train_batch,
                     router_batch=args.router_batch, steps=args.steps, warmup=args.warmup,
                     eval_workers=args.workers)
    method = args.start_method if args.start_method != "auto" else "spawn" if device == "cuda" else "forkserver"
    launcher = Launcher(method, threads, args.note)
    info = launcher.run("probe", plan, {})
    if "error" in info:
        raise SystemExit(f"python -m benchmarks.gpu.run: the device probe failed: {info['error']}")
    out = harness.out_dir(args, NAME) / device_tag(info)
    import torch

    units = harness.Units(out, {"plan": asdict(plan), "threads": threads, "torch": torch.__version__})
    chosen = args.only or list(UNITS)
    todo = [u for u in chosen if args.redo or not units.has(u)]
    print(f"[gpu] {info['machine'].get('gpu') if device == 'cuda' else info['machine']['cpu']} ({device}, amp "
          f"{info['amp']}, {threads} threads); {len(todo)} of {len(chosen)} units to measure into {out}", flush=True)
    progress = harness.Progress("parts", sum(len(UNITS[u]) for u in todo), tag=NAME)
    failed = {}
    for unit in chosen:
        if unit not in todo:
            print(f"[gpu] {unit}: from its record ({units.path(unit)})", flush=True)
            continue
        rec = measure_unit(unit, plan, launcher, progress)
        if "error" in rec:
            failed[unit] = rec["error"]
            print(f"[gpu] {unit} FAILED: {rec['error']}", file=sys.stderr, flush=True)
        else:
            units.put(unit, {**rec, "date": time.strftime("%Y-%m-%d %H:%M")})
    wall = time.perf_counter() - t0
    write(out, args, argv, plan, info, units, failed, wall, method, threads)
    print(f"[gpu] done in {wall:.1f} s ({len(units.reused)} units from records): {out / 'results.md'}", flush=True)
    return 1 if failed else 0


def write(out: Path, args: argparse.Namespace, argv: list[str], plan: Plan, info: dict[str, Any],
          units: harness.Units, failed: dict[str, str], wall: float, method: str, threads: int) -> None:
    """results.json (every unit with a record in `out`, and what failed) and results.md beside the records."""
    from .report import render

    results = {"command": harness.command(NAME, argv), "date": time.strftime("%Y-%m-%d %H:%M"), "device": info,
               "plan": asdict(plan), "threads": threads, "start_method": method, "wall_time_s": round(wall, 1),
               "units": {u: rec for u in UNITS if (rec := units.get(u)) is not None}, "failed": failed,
               "units_reused": sorted(units.reused)}
    harness.write_results(out, results, render)


if __name__ == "__main__":
    sys.exit(main())
