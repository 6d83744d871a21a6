"""clipforge's speed in one run: training-loop overhead, evaluation throughput and the MoE layer.

    python -m benchmarks.perf.run [--quick] [--out benchmarks/perf/results] [--threads N]

Five parts, one results file:
  * train  `clipforge.train.loop.train` against a bare transformers loop (`CLIPModel(..., return_loss=True)`,
           AdamW, grad clip, step) on the same architecture and the same pre-collated batch; ms/step of each
           and the overhead clipforge / bare - 1 (goal: at most 5 %);
  * eval   images/s and captions/s of `clipforge.eval.embed.embed_images` / `embed_texts` (demo ancestry);
  * moe    the per-shape ratios of `benchmarks.moe_layer` (its functions, run here);
  * options  the step under each speed option (AdamW kernels, attention, bf16, torch.compile, the new default) on
           the ancestry @ 256 and ViT-B/16 @ 8: ms/step, GFLOP/s, share of the fp32 / bf16 matmul peaks measured here;
  * profile  where one ancestry step's time goes (torch.profiler, by kind), and the data path (step_options.py).
Writes results.json and results.md (atomically) into --out, and prints the tables. See README.md for the method.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

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

from .. import harness
from ..moe_layer import run as moe_layer
from . import step_options
from .report import render

NAME = "perf"
PARTS = ("train", "eval", "moe", "options", "profile")
OVERHEAD_GOAL = 0.05
EVAL_ARCH = "ancestry"


class TrainCase(NamedTuple):
    """One training comparison."""

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


def options_part(quick: bool, steps: int, rounds: int, threads: int, device: torch.device) -> dict:
    """step_options.py's table: every option on each case (ViT-B/16: one round, fewer steps; a CPU step takes
    seconds)."""
    peak = step_options.peaks(threads, device, quick)
    print(f"[perf] matmul peaks: fp32 {peak['float32']['gflops']:.0f}, bf16 {peak['bfloat16']['gflops']:.1f} GFLOP/s",
          flush=True)
    items = lambda batch, n: PrebuiltItems(list(batch["pixel_values"].unbind(0)), n)  # noqa: E731
    stamper = lambda batch: StampingCollate(batch, syncer(device))  # noqa: E731
    parts = []
    for i, case in enumerate(option_cases(quick, device.type == "cuda")):
        big = i > 0 and device.type == "cpu"
        parts.append(step_options.options_part([case], 1 if big else 2, max(2, steps // 2) if big else steps,
                                               1 if big else rounds, device, quick, peak, fixed_batch, stamper,
                                               items))
    attn = {arch: kernel for part in parts for arch, kernel in part["new_default"]["attn"].items()}
    return {"peaks": peak, "new_default": {**parts[0]["new_default"], "attn": attn},
            "cases": [{k: v for k, v in p.items() if k not in ("peaks", "new_default")} for p in parts]}


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
    return [(b - a) * 1e3 for a, b in zip(kept, kept[1:], strict=False)]


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


def moe_part(quick: bool, device: torch.device) -> dict:
    """benchmarks.moe_layer's measurement with its own shapes and defaults (quick: its --quick)."""
    repeats, warmup = (3, 1) if quick else (20, 3)
    rows = []
    for shape in moe_layer.shapes(quick, device.type == "cuda"):
        print(f"[perf] moe {shape.name}: {shape.batch} × {shape.seq} tokens, d={shape.hidden}", flush=True)
        rows.append(moe_layer.measure(shape, device, warmup, repeats))
    return {"experts": moe_layer.EXPERTS, "top_k": moe_layer.TOP_K, "warmup": warmup, "repeats": repeats,
            "shapes": rows}


# ----------------------------------------------------------------------------------------------- main


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones and its own."""
    harness.add_common(p, NAME, work=False, ancestry=False, threads="all cores")
    p.add_argument("--steps", type=int, help="timed training steps per run (default 10, quick 3)")
    p.add_argument("--warmup", type=int, help="untimed training steps first (default 2, quick 1)")
    p.add_argument("--rounds", type=int, help="runs of each training loop, alternating (default 2, quick 1)")
    p.add_argument("--eval-n", type=int, help="images and captions embedded (default 2000, quick 64)")
    p.add_argument("--option-steps", type=int, help="timed steps per option run (default 5, quick 2; ViT-B/16 half)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)}); a subset replaces those "
                        "parts in an existing --out and records the command that measured them")


def measure(args: argparse.Namespace, parts: list[str], results: dict[str, Any], device: torch.device) -> None:
    """Run the chosen parts into `results`."""
    q = args.quick
    rounds = args.rounds or (1 if q else 2)
    if "train" in parts:
        results["train"] = train_part(train_cases(q, device.type == "cuda"), args.warmup if args.warmup is not None
                                      else (1 if q else 2), args.steps or (3 if q else 10), rounds, device)
    if "eval" in parts:
        results["eval"] = eval_part(args.eval_n or (64 if q else 2000), 1 if q else 3, device)
    if "moe" in parts:
        results["moe"] = moe_part(q, device)
    if "options" in parts:
        results["options"] = options_part(q, args.option_steps or (2 if q else 5), rounds, torch.get_num_threads(),
                                          device)
    if "profile" in parts:
        results["profile"] = step_options.profile_part(*(("tiny", 16) if q else ("ancestry", 256)), q)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.perf.run [flags]`; 0 on success."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = harness.parser(NAME, __doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    command = harness.command(NAME, argv)
    parts = [x for x in args.parts.split(",") if x]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts: choose among {','.join(PARTS)}, got {args.parts!r}")
    harness.set_threads(args.threads, default_all=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = harness.out_dir(args, NAME)
    # the train part's amp says the dtype; the device and transformers' version matter beside torch's
    machine = {**harness.machine(args.note), "device": device.type, "transformers": transformers.__version__}
    results: dict[str, Any] = {"command": command, "quick": args.quick, "machine": machine}
    if set(parts) != set(PARTS):  # a partial rerun: keep the other parts, say which run measured what
        if not (out / "results.json").is_file():
            raise SystemExit(f"--parts {args.parts}: {out} holds no earlier run to complete")
        results = harness.read_results(out)
        results.setdefault("reruns", []).append({"command": command, "parts": parts, "machine": machine})
    measure(args, parts, results, device)
    harness.write_results(out, results, render)
    print((out / "results.md").read_text(), end="")
    print(f"[perf] wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
