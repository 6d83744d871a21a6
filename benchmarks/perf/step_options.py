"""The training step under each speed option, and where its time goes; a part of benchmarks.perf.run.

* `peaks`: fp32 and bf16 matmul GFLOP/s of this machine (square matmuls), measured in the same run;
* `options_part`: `train()` ms/step of each option (today's default, foreach / fused AdamW, eager
  attention, bf16 autocast with SDPA and with eager attention, torch.compile, the new default) on the ancestry
  @ 256 and ViT-B/16 @ 8,
  with achieved GFLOP/s (FLOPs of one forward + backward, counted by torch's FlopCounterMode) and
  its share of both peaks;
* `profile_part`: torch.profiler's self time of one ancestry step grouped by kind (matmuls,
  attention, layer norms, GELU, embedding, loss, optimizer, ...), plus the data path (scene
  rendering and collation of a real 256-sample batch) and the embedding's share of AdamW and clipping.

Their results.md sections are `benchmarks.perf.report.options_markdown` and `profile_markdown`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipforge.models.registry import build
from clipforge.train.fast import adamw_kwargs, cpu_has_native_bf16, longest_sequence, resolve_amp, resolve_attention
from clipforge.train.loop import TrainConfig, train
from clipforge.train.loss import ClipLoss, ClipStep
from clipforge.train.optim import param_groups


class Option(NamedTuple):
    """One column of the comparison: TrainConfig overrides (the attention kernel among them)."""

    name: str
    config: dict[str, Any]


# Today's (pre-issue-17) default on the CPU: torch's for-loop AdamW, fp32, SDPA attention, no compile.
TODAY = {"optimizer": "for-loop", "amp": "off", "compile": False, "attention": "sdpa"}


def options(device: torch.device, quick: bool) -> list[Option]:
    """The options measured; bf16 only where it is native (emulated bf16 on a CPU takes minutes per step)."""
    rows = [Option("today's default (for-loop AdamW, fp32, SDPA)", TODAY),
            Option("foreach AdamW", {**TODAY, "optimizer": "foreach"}),
            Option("fused AdamW", {**TODAY, "optimizer": "fused"}),
            Option("eager attention", {**TODAY, "attention": "eager"})]
    if device.type == "cuda" or cpu_has_native_bf16():
        bf16 = {**TODAY, "optimizer": "fused", "amp": "bf16"}
        rows += [Option("bf16 autocast + fused AdamW (SDPA)", bf16),
                 Option("bf16 autocast + fused AdamW + eager attention", {**bf16, "attention": "eager"})]
    if not quick:
        rows.append(Option("torch.compile + fused AdamW", {**TODAY, "optimizer": "fused", "compile": True}))
    rows.append(Option("new default (TrainConfig())", {}))
    return rows


def peaks(threads: int, device: torch.device, quick: bool) -> dict[str, Any]:
    """Best-of-n square-matmul GFLOP/s in fp32 and bf16 (bf16 small when it is emulated: it is slow)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    native = device.type == "cuda" or cpu_has_native_bf16()
    out: dict[str, Any] = {"threads": threads, "native_bf16": native}
    for dtype, n in ((torch.float32, 256 if quick else 1024), (torch.bfloat16, 1024 if native and not quick else 128)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(5 if dtype == torch.float32 or native else 2):
            sync()
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
        out[str(dtype).split(".")[1]] = {"n": n, "gflops": 2 * n**3 / best / 1e9}
    return out


def step_flops(arch: str, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward + backward of the CLIP step (matmuls, convolutions, attention)."""
    model = build(arch, seed=0).train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = ClipStep(ClipLoss())(model, batch)
        loss.backward()
    return int(counter.get_total_flops())


def time_option(arch: str, batch_size: int, option: Option, warmup: int, steps: int, device: torch.device,
                fixed_batch: Callable, stamper: Callable, items: Callable) -> tuple[list[float], float]:
    """Per-step ms of `train()` under `option` after `warmup` steps, and the first step's seconds."""
    total = warmup + steps + 1
    model = build(arch, seed=0)
    batch = fixed_batch(model, batch_size)
    collate = stamper(batch)
    cfg = TrainConfig(**{"steps": total, "batch_size": batch_size, "save_every": 0, "eval_every": 0,
                         "log_every": total, **option.config})
    with tempfile.TemporaryDirectory(prefix="clipforge-perf-") as out_dir:
        train(model, items(batch, batch_size * total), cfg, out_dir, collate_fn=collate, progress=False)
    stamps = collate.stamps
    kept = stamps[warmup:]
    return [(b - a) * 1e3 for a, b in zip(kept, kept[1:], strict=False)], stamps[1] - stamps[0]


def options_part(cases: list[tuple[str, int]], warmup: int, steps: int, rounds: int, device: torch.device,
                 quick: bool, peak: dict[str, Any], fixed_batch: Callable, stamper: Callable,
                 items: Callable) -> dict[str, Any]:
    """Every option on every case, `rounds` times in rotating order; median ms/step over all timed steps."""
    opts = options(device, quick)
    rows = []
    for arch, bs in cases:
        flops = step_flops(arch, fixed_batch(build(arch, seed=0), bs))
        times: dict[str, list[float]] = {o.name: [] for o in opts}
        first: dict[str, float] = {}
        for r in range(rounds):
            order = opts[r % len(opts):] + opts[:r % len(opts)]
            for o in order:
                print(f"[perf] options {arch} @ {bs}, round {r + 1}: {o.name}", flush=True)
                ms, first_s = time_option(arch, bs, o, warmup, steps, device, fixed_batch, stamper, items)
                times[o.name].extend(ms)
                first[o.name] = max(first.get(o.name, 0.0), first_s)
        base = statistics.median(times[opts[0].name])
        for o in opts:
            med = statistics.median(times[o.name])
            gflops = flops / (med / 1e3) / 1e9
            rows.append({"arch": arch, "batch": bs, "option": o.name, "config": o.config,
                         "ms_per_step": med, "speedup_vs_today": base / med, "first_step_s": first[o.name],
                         "gflop_per_step": flops / 1e9, "gflops": gflops,
                         "share_fp32_peak": gflops / peak["float32"]["gflops"],
                         "share_bf16_peak": gflops / peak["bfloat16"]["gflops"], "step_ms": times[o.name]})
    default = TrainConfig()
    return {"warmup": warmup, "steps": steps, "rounds": rounds, "peaks": peak, "rows": rows,
            "new_default": {"amp": resolve_amp(default.amp, device),
                            "optimizer": next(iter(adamw_kwargs(default.optimizer, [torch.zeros(1, device=device)]))),
                            "compile": default.compile,
                            # per model: "auto" depends on the sequence length (train.fast.SHORT_SEQUENCE)
                            "attn": {arch: resolve_attention(default.attention, resolve_amp(default.amp, device),
                                                             device, longest_sequence(build(arch)))
                                     for arch, _ in cases}}}


# --------------------------------------------------------------------------------------------- profile

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("attention (SDPA / softmax)", ("scaled_dot_product", "flash_attention", "softmax_backward", "aten::_softmax",
                                    "aten::softmax", "baddbmm", "aten::bmm")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("layer norm (fwd + bwd)", ("layer_norm",)),
    ("GELU (fwd + bwd)", ("gelu",)),
    ("embedding lookup + its dense gradient", ("embedding", "index_select", "aten::index", "index_add")),
    ("matmul: linear layers, logits (fwd + bwd)", ("aten::mm", "aten::addmm", "aten::matmul", "convolution")),
    ("reductions (bias grads, norms)", ("aten::sum", "aten::norm", "vector_norm", "aten::mean")),
    ("copies / layout (transpose, contiguous)", ("aten::copy_", "aten::clone", "contiguous", "aten::cat")),
]
OTHER = "other elementwise (bias / residual adds, muls, fills, ...)"


def _category(ev: Any, region: str) -> str:
    """The kind of a profiler event: by its region (optimizer, clipping), else by its own name or the
    nearest ancestor op with a known kind (so a linear's copy counts as matmul, an embedding's fill as embedding)."""
    if region == "optimizer":
        return "AdamW update"
    if region == "clip":
        return "gradient clipping (norm of every grad)"
    node = ev
    while node is not None and node.name not in ("forward", "backward"):
        for cat, keys in CATEGORIES:
            if any(k in node.name for k in keys):
                return cat
        node = node.cpu_parent
    return OTHER


def _profiled_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, params: list) -> None:
    from torch.profiler import record_function

    optimizer.zero_grad(set_to_none=True)
    with record_function("forward"):
        loss, _ = ClipStep(ClipLoss())(model, batch)
    with record_function("backward"):
        loss.backward()
    with record_function("clip"):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    with record_function("optimizer"):
        optimizer.step()


def _categorise(prof: Any, n_steps: int) -> tuple[dict[str, float], float]:
    """ms per step of each category (self CPU time), and the total."""
    out: dict[str, float] = {}
    total = 0.0
    for ev in prof.events():
        if ev.name in ("forward", "backward", "clip", "optimizer") or ev.name.startswith(("Optimizer.", "autograd::")):
            continue
        self_ms = ev.self_cpu_time_total / 1e3 / n_steps
        parent, region = ev.cpu_parent, ""
        while parent is not None:
            if parent.name in ("forward", "backward", "clip", "optimizer"):
                region = parent.name
            parent = parent.cpu_parent
        cat = _category(ev, region)
        out[cat] = out.get(cat, 0.0) + self_ms
        total += self_ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1])), total


def _ms(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def profile_part(arch: str, batch_size: int, quick: bool) -> dict[str, Any]:
    """Where one step's time goes, for today's optimizer and the new default's; plus the data path."""
    from torch.profiler import ProfilerActivity, profile

    from clipforge.data.collate import Collator
    from clipforge.demo.ancestry import AncestryRecipe, training_data
    from clipforge.models.preprocess import transform_for

    print(f"[perf] profile {arch} @ {batch_size}", flush=True)
    n_steps = 1 if quick else 2
    model = build(arch, seed=0).train()
    recipe = AncestryRecipe.quick() if quick else AncestryRecipe()
    data = training_data(recipe)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=g)[:batch_size].tolist()
    collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)
    t0 = time.perf_counter()
    samples = [data[i] for i in idx]
    t1 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        batch = collate(samples)
    t2 = time.perf_counter()
    result: dict[str, Any] = {"arch": arch, "batch": batch_size, "profiled_steps": n_steps,
                              "text_tokens": int(batch["input_ids"].shape[1]),
                              "data_ms": {"getitem (scene rendering, Fashion-MNIST lookup)": (t1 - t0) * 1e3,
                                          "collate (image transform, tokenise, stack)": (t2 - t1) * 1e3},
                              "optimizers": {}}
    for opt_name, kw in (("for-loop", {"foreach": False}), ("fused", {"fused": True})):
        model = build(arch, seed=0).train()
        groups = param_groups(model, weight_decay=0.1)
        params = [p for g_ in groups for p in g_["params"]]
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, **kw)
        _profiled_step(model, batch, opt, params)  # warm-up: optimizer state, first-call allocations
        t0 = time.perf_counter()
        for _ in range(n_steps):
            _profiled_step(model, batch, opt, params)
        wall = (time.perf_counter() - t0) / n_steps * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n_steps):
                _profiled_step(model, batch, opt, params)
        cats, total = _categorise(prof, n_steps)
        # The token embedding alone: its AdamW update and its share of gradient clipping.
        emb = model.text_model.embeddings.token_embedding.weight
        emb_opt = torch.optim.AdamW([emb], lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, **kw)
        reps = 1 if quick else 5
        emb_ms = _ms(emb_opt.step, reps)
        emb_clip_ms = _ms(lambda emb=emb: torch.nn.utils.clip_grad_norm_([emb], 1.0), reps)
        all_opt_ms = _ms(opt.step, reps)
        rows_used = int(emb.grad.ne(0).any(1).sum())
        result["optimizers"][opt_name] = {
            "step_ms_unprofiled": wall, "profiled_self_ms": total, "categories_ms": cats,
            "adamw_all_params_ms": all_opt_ms, "adamw_token_embedding_ms": emb_ms,
            "clip_token_embedding_ms": emb_clip_ms, "token_embedding_rows_with_grad": rows_used,
            "token_embedding_rows": int(emb.shape[0])}
    return result
