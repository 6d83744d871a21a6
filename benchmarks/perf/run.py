"""clipforge's speed in one run: training-loop overhead, evaluation throughput and the MoE layer.

    python benchmarks/perf/run.py [--quick] [--out benchmarks/perf/results.json] [--threads N]

Five parts, one results file:
  * train  `clipforge.train.loop.train` against a bare transformers loop (`CLIPModel(..., return_loss=True)`,
           AdamW, grad clip, step) on the same architecture and the same pre-collated batch; ms/step of each
           and the overhead clipforge / bare - 1 (goal: at most 5 %);
  * eval   images/s and captions/s of `clipforge.eval.embed.embed_images` / `embed_texts` (demo ancestry);
  * moe    the per-shape ratios of `benchmarks/moe_layer/run.py` (its functions, run here);
  * options  the step under each speed option (AdamW kernels, attention, bf16, torch.compile, the new default) on
           the ancestry @ 256 and ViT-B/16 @ 8: ms/step, GFLOP/s, share of the fp32 / bf16 matmul peaks measured here;
  * profile  where one ancestry step's time goes (torch.profiler, by kind), and the data path (step_options.py).
Writes results.json (atomically) and results.md beside it, and prints the tables. See README.md for the method.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import torch
import transformers
from torch import Tensor, nn
from torch.utils.data import Dataset

from clipforge.data.collate import Collator
from clipforge.data.scenes import ScenesDataset
from clipforge.eval.embed import embed_images, embed_texts
from clipforge.models.preprocess import transform_for
from clipforge.models.registry import build
from clipforge.train.fast import adamw_kwargs
from clipforge.train.loop import TrainConfig, train

HERE = Path(__file__).resolve().parent
MOE_BENCH = HERE.parent / "moe_layer" / "run.py"
OPTIONS_BENCH = HERE / "step_options.py"
PARTS = ("train", "eval", "moe", "options", "profile")
OVERHEAD_GOAL = 0.05
EVAL_ARCH = "ancestry"


class TrainCase(NamedTuple):
    """One training comparison (a NamedTuple: the file loads via `spec_from_file_location` unregistered)."""

    arch: str
    batch: int


def train_cases(quick: bool, cuda: bool) -> list[TrainCase]:
    """The demo ancestry at its training batch, and ViT-B/32 at a batch a CPU gets through in seconds."""
    if quick:
        return [TrainCase("tiny", 16)]
    return [TrainCase("ancestry", 256), TrainCase("ViT-B-32", 64 if cuda else 8)]


def option_cases(quick: bool, cuda: bool) -> list[tuple[str, int]]:
    """The options part's cases: the demo ancestry at its training batch and a ViT-B/16-shaped step."""
    return [("tiny", 16)] if quick else [("ancestry", 256), ("ViT-B-16", 64 if cuda else 8)]


def options_part(bench: ModuleType, quick: bool, steps: int, rounds: int, threads: int, device: torch.device) -> dict:
    """step_options.py's table: every option on each case (ViT-B/16: one round, fewer steps; a CPU step takes seconds)."""
    peak = bench.peaks(threads, device, quick)
    print(f"[perf] matmul peaks: fp32 {peak['float32']['gflops']:.0f}, bf16 {peak['bfloat16']['gflops']:.1f} GFLOP/s",
          flush=True)
    items = lambda batch, n: PrebuiltItems(list(batch["pixel_values"].unbind(0)), n)  # noqa: E731
    stamper = lambda batch: StampingCollate(batch, syncer(device))  # noqa: E731
    parts = []
    for i, case in enumerate(option_cases(quick, device.type == "cuda")):
        big = i > 0 and device.type == "cpu"
        parts.append(bench.options_part([case], 1 if big else 2, max(2, steps // 2) if big else steps,
                                        1 if big else rounds, device, quick, peak, fixed_batch, stamper, items))
    attn = {arch: kernel for part in parts for arch, kernel in part["new_default"]["attn"].items()}
    return {"peaks": peak, "new_default": {**parts[0]["new_default"], "attn": attn},
            "cases": [{k: v for k, v in p.items() if k not in ("peaks", "new_default")} for p in parts]}


def load_moe_bench(path: Path = MOE_BENCH, name: str = "clipforge_moe_layer_bench_for_perf") -> ModuleType:
    """benchmarks/moe_layer/run.py (or another benchmark script) as a module (scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def syncer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# ---------------------------------------------------------------------------------------------- train


def fixed_batch(model: nn.Module, batch: int) -> dict[str, Tensor]:
    """One real training batch (scenes images and captions through clipforge's own collator), built once."""
    vision, text = model.config.vision_config, model.config.text_config
    scenes = ScenesDataset(split="train", size=batch, seed=0, image_size=vision.image_size)
    # caption="first": building the batch must not draw from the RNG (no effect on timing either way).
    collate = Collator(transform_for(model.config), text.max_position_embeddings, caption="first")
    return collate([scenes[i] for i in range(batch)])


class PrebuiltItems(Dataset):
    """Map-style dataset whose items are tensors already: fetching one is a list lookup, so the loop's
    data path costs next to nothing and the comparison is of step machinery only."""

    def __init__(self, rows: list[Tensor], length: int) -> None:
        self.rows, self.length = rows, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Tensor:
        return self.rows[i % len(self.rows)]


class StampingCollate:
    """collate_fn that ignores its items, returns the fixed batch, and records when each step fetched it.

    With `num_workers=0` the loop calls it at the start of every step, so consecutive stamps bracket one
    full loop iteration. It waits for the device first, so a stamp also marks the previous step's end on CUDA.
    """

    def __init__(self, batch: dict[str, Tensor], sync: Callable[[], None]) -> None:
        self.batch, self.sync = batch, sync
        self.stamps: list[float] = []

    def __call__(self, items: list[Tensor]) -> dict[str, Tensor]:
        self.sync()
        self.stamps.append(time.perf_counter())
        return self.batch


def step_ms(stamps: list[float], warmup: int) -> list[float]:
    """ms of each step after the warm-up, from the stamps taken at the start of every step."""
    kept = stamps[warmup:]
    return [(b - a) * 1e3 for a, b in zip(kept, kept[1:])]


def train_config(case: TrainCase, total: int, device: torch.device) -> TrainConfig:
    """The clipforge run: default optimiser, clipping and temperature, no eval, no checkpoints, and one
    log line, at the last step (which is never timed)."""
    return TrainConfig(steps=total, batch_size=case.batch, save_every=0, eval_every=0, log_every=total,
                       fixed_logit_scale=None, amp="bf16" if device.type == "cuda" else "off")


def run_clipforge(case: TrainCase, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Per-step ms of `train()` on the fixed batch (steps after `warmup`; one extra untimed step at the end)."""
    total = warmup + steps + 1  # the last step has no following stamp, and holds the one log write
    model = build(case.arch, seed=0)
    batch = fixed_batch(model, case.batch)
    collate = StampingCollate(batch, syncer(device))
    # One epoch spans the whole run: a 1-batch dataset would restart the DataLoader iterator every step,
    # a cost real (long) epochs never pay.
    dataset = PrebuiltItems(list(batch["pixel_values"].unbind(0)), case.batch * total)
    with tempfile.TemporaryDirectory(prefix="clipforge-perf-") as out_dir:
        train(model, dataset, train_config(case, total, device), out_dir, collate_fn=collate, progress=False)
    if len(collate.stamps) != total:
        raise AssertionError(f"expected {total} collate calls, got {len(collate.stamps)}")
    return step_ms(collate.stamps, warmup)


def run_bare(case: TrainCase, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Per-step ms of a bare transformers loop with clipforge's optimiser settings on the same batch."""
    total = warmup + steps + 1  # as many steps as clipforge runs, so both see the same warm-up
    cfg = train_config(case, total, device)
    model = build(case.arch, seed=0).to(device).train()
    batch = fixed_batch(model, case.batch)
    # The same AdamW kernel as clipforge's default, so the difference is the loop's machinery only.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                            weight_decay=cfg.weight_decay, **adamw_kwargs(cfg.optimizer, model.parameters()))
    sync, cuda = syncer(device), device.type == "cuda"
    stamps: list[float] = []
    for _ in range(total):
        sync()
        stamps.append(time.perf_counter())
        # The host-to-device copy is in clipforge's step too (its loop moves every batch).
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model(input_ids=b["input_ids"], pixel_values=b["pixel_values"], return_loss=True)
        out.loss.backward()
        if cfg.grad_clip is not None and cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step_ms(stamps, warmup)


def train_part(cases: list[TrainCase], warmup: int, steps: int, rounds: int, device: torch.device) -> dict:
    """Both loops per case, `rounds` times in alternating order (drift from other load hits both alike)."""
    rows = []
    for case in cases:
        print(f"[perf] train {case.arch} batch {case.batch}: {rounds} round(s) of {warmup} warm-up + {steps} "
              "timed steps per loop", flush=True)
        times: dict[str, list[float]] = {"clipforge": [], "bare": []}
        for r in range(rounds):
            order = ("bare", "clipforge") if r % 2 == 0 else ("clipforge", "bare")
            for name in order:
                fn = run_bare if name == "bare" else run_clipforge
                times[name].extend(fn(case, warmup, steps, device))
        ms = {name: statistics.median(t) for name, t in times.items()}
        overhead = ms["clipforge"] / ms["bare"] - 1
        rows.append({"arch": case.arch, "batch": case.batch, "ms_per_step": ms, "overhead": overhead,
                     "within_goal": overhead <= OVERHEAD_GOAL, "samples_per_s":
                     {name: case.batch / (v / 1e3) for name, v in ms.items()}, "step_ms": times})
    return {"warmup": warmup, "steps": steps, "rounds": rounds, "goal": OVERHEAD_GOAL,
            "amp": "bf16 autocast" if device.type == "cuda" else "off (fp32)", "cases": rows}


# ----------------------------------------------------------------------------------------------- eval


def _default(fn: Callable, name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


def eval_part(n: int, repeats: int, device: torch.device) -> dict:
    """images/s and captions/s of the embedding functions, median of `repeats` passes over n scenes.

    Images are rendered (and captions generated) before timing: the timed path is clipforge's, from PIL
    images (preprocessing, batching, forward, normalising) and strings (tokenising, forward, normalising).
    Throughput does not depend on the weights, so a freshly initialised model serves.
    """
    print(f"[perf] eval {EVAL_ARCH}: {n} images and captions, {repeats} pass(es)", flush=True)
    model = build(EVAL_ARCH, seed=0).to(device)
    scenes = ScenesDataset(split="test", size=n, seed=0, image_size=model.config.vision_config.image_size)
    samples = [scenes[i] for i in range(n)]
    images, captions = [s.image for s in samples], [s.captions[0] for s in samples]
    warm = min(n, 64)
    embed_images(model, images[:warm], progress=False)  # first-call allocations and kernel choices
    embed_texts(model, captions[:warm], progress=False)

    def seconds(fn: Callable[[], Tensor]) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()  # returns CPU tensors, so the device is done when it returns
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_img = seconds(lambda: embed_images(model, images, progress=False))
    t_txt = seconds(lambda: embed_texts(model, captions, progress=False))
    return {"arch": EVAL_ARCH, "n": n, "repeats": repeats,
            "image_batch_size": _default(embed_images, "batch_size"),
            "text_batch_size": _default(embed_texts, "batch_size"),
            "context_length": model.config.text_config.max_position_embeddings,
            "image_seconds": t_img, "text_seconds": t_txt, "images_per_s": n / t_img, "captions_per_s": n / t_txt}


# ------------------------------------------------------------------------------------------------ moe


def moe_part(moe: ModuleType, quick: bool, device: torch.device) -> dict:
    """benchmarks/moe_layer's measurement with its own shapes and defaults (quick: its --quick)."""
    repeats, warmup = (3, 1) if quick else (20, 3)
    rows = []
    for shape in moe.shapes(quick, device.type == "cuda"):
        print(f"[perf] moe {shape.name}: {shape.batch} × {shape.seq} tokens, d={shape.hidden}", flush=True)
        layers, diff, load = moe.build(shape, device)
        x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device)
        ms = moe.time_layers(layers, x, warmup, repeats)
        rows.append({**shape._asdict(), "ms": ms, "max_abs_diff": diff, "expert_load": load,
                     "ratio_vs_two_dense": ms["moe"] / ms["two_dense"],
                     "ratio_vs_released_loop": ms["moe"] / ms["released_loop"]})
    return {"experts": moe.EXPERTS, "top_k": moe.TOP_K, "warmup": warmup, "repeats": repeats, "shapes": rows}


# --------------------------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    """results.md: the command, the machine, then one table per part."""
    m = results["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['threads']} threads"
    tr, ev, mo = results["train"], results["eval"], results["moe"]
    lines = [f"`{results['command']}`", "",
             f"{where}; torch {m['torch']}, transformers {m['transformers']}; load average at start "
             f"{m['load_average']}.", "",
             "## Training step: clipforge `train()` vs a bare transformers loop", "",
             f"Same model, same pre-collated batch, amp {tr['amp']}; median ms/step over {tr['rounds']} round(s) "
             f"× {tr['steps']} steps, after {tr['warmup']} warm-up step(s) per run. Goal: overhead ≤ "
             f"{tr['goal']:.0%}.", "",
             "| arch | batch | clipforge ms/step | bare ms/step | overhead | within goal |",
             "|---|---|---|---|---|---|"]
    for r in tr["cases"]:
        lines.append(f"| {r['arch']} | {r['batch']} | {r['ms_per_step']['clipforge']:.2f} | "
                     f"{r['ms_per_step']['bare']:.2f} | {r['overhead']:+.1%} | {'yes' if r['within_goal'] else 'no'} |")
    lines += ["", "## Evaluation embedding throughput", "",
              f"`embed_images` / `embed_texts` on {ev['arch']} (fresh weights), {ev['n']} scenes test images and "
              f"their first captions, median of {ev['repeats']} pass(es); batch sizes {ev['image_batch_size']} / "
              f"{ev['text_batch_size']} (the defaults).", "",
              "| arch | n | images/s | captions/s |", "|---|---|---|---|",
              f"| {ev['arch']} | {ev['n']} | {ev['images_per_s']:.0f} | {ev['captions_per_s']:.0f} |",
              "", "## MoE FFN layer (benchmarks/moe_layer)", "",
              f"E={mo['experts']}, top-{mo['top_k']}, forward + backward, median of {mo['repeats']} "
              f"(after {mo['warmup']} warm-up).", "",
              "| shape | tokens | d / d_ff | moe ms | two dense ms | released loop ms | moe / two dense "
              "| moe / released loop |", "|---|---|---|---|---|---|---|---|"]
    for r in mo["shapes"]:
        lines.append(f"| {r['name']} | {r['batch'] * r['seq']} | {r['hidden']} / {r['intermediate']} | "
                     f"{r['ms']['moe']:.2f} | {r['ms']['two_dense']:.2f} | {r['ms']['released_loop']:.2f} | "
                     f"{r['ratio_vs_two_dense']:.2f} | {r['ratio_vs_released_loop']:.2f} |")
    if "options" in results:
        bench = load_moe_bench(OPTIONS_BENCH, "clipforge_perf_step_options")
        lines += bench.markdown(results["options"], results["profile"])
    for r in results.get("reruns", []):
        mr = r["machine"]
        lines += ["", f"Parts {', '.join(r['parts'])} rerun by `{r['command']}` ({mr['threads']} thread(s); load "
                      f"average at start {mr['load_average']}); they replace that run's numbers above."]
    return "\n".join(lines) + "\n"


def describe_machine(moe: ModuleType, device: torch.device) -> dict[str, Any]:
    """moe_layer's device description plus versions and the load when the run started (the machine is shared)."""
    d = moe.describe_device(device)
    d.pop("dtype", None)  # per part here: see train.amp
    return {**d, "transformers": transformers.__version__, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few steps (smoke test, seconds)")
    p.add_argument("--out", type=Path, default=HERE / "results.json", help="results.json path (results.md beside it)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--steps", type=int, help="timed training steps per run (default 10, quick 3)")
    p.add_argument("--warmup", type=int, help="untimed training steps first (default 2, quick 1)")
    p.add_argument("--rounds", type=int, help="runs of each training loop, alternating (default 2, quick 1)")
    p.add_argument("--eval-n", type=int, help="images and captions embedded (default 2000, quick 64)")
    p.add_argument("--option-steps", type=int, help="timed steps per option run (default 5, quick 2; ViT-B/16 half)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)}); a subset replaces those "
                        "parts in an existing --out and records the command that measured them")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "benchmarks/perf/run.py", *(sys.argv[1:] if argv is None else argv)])

    moe = load_moe_bench()
    torch.set_num_threads(args.threads or moe.all_cores())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q = args.quick
    steps = args.steps or (3 if q else 10)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    rounds = args.rounds or (1 if q else 2)
    eval_n = args.eval_n or (64 if q else 2000)
    parts = [x for x in args.parts.split(",") if x]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts: choose among {','.join(PARTS)}, got {args.parts!r}")
    machine = describe_machine(moe, device)
    results: dict[str, Any] = {"command": command, "quick": q, "machine": machine}
    if set(parts) != set(PARTS):  # a partial rerun: keep the other parts, say which run measured what
        if not args.out.is_file():
            raise SystemExit(f"--parts {args.parts}: {args.out} holds no earlier run to complete")
        results = json.loads(args.out.read_text())
        results.setdefault("reruns", []).append({"command": command, "parts": parts, "machine": machine})
    if "train" in parts:
        results["train"] = train_part(train_cases(q, device.type == "cuda"), warmup, steps, rounds, device)
    if "eval" in parts:
        results["eval"] = eval_part(eval_n, 1 if q else 3, device)
    if "moe" in parts:
        results["moe"] = moe_part(moe, q, device)
    opts = load_moe_bench(OPTIONS_BENCH, "clipforge_perf_step_options")
    if "options" in parts:
        results["options"] = options_part(opts, q, args.option_steps or (2 if q else 5), rounds,
                                          torch.get_num_threads(), device)
    if "profile" in parts:
        results["profile"] = opts.profile_part(*(("tiny", 16) if q else ("ancestry", 256)), q)

    moe.write_atomic(args.out, json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    moe.write_atomic(args.out.with_suffix(".md"), table)
    print(table, end="")
    print(f"[perf] wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
