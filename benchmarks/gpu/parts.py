"""The measurements, each run in a measuring process of its own (`benchmarks.gpu.run` starts one per part), so a
peak memory figure is that part's alone: `torch.cuda.max_memory_allocated` on CUDA, the process's peak resident
memory (`ru_maxrss`) on a CPU.

* `train`: one CLIP training loop, `clipforge` (`clipforge.train.train`, the loop `clipforge train` runs) or
  `bare` (transformers `CLIPModel(..., return_loss=True)`, torch's AdamW, autocast), on the same synthetic batch;
* `moe`: clipforge's MoE FFN (sparse and grouped dispatch) and two dense FFNs, forward + backward;
* `eval`: `clipforge.eval.embed.embed_images` / `embed_texts`, and the image tower alone on ready pixels;
* `router`: a CLIP-MoE router-training step (only the routers train), activation checkpointing on or off.

Each returns a JSON-able dict; a part that runs out of memory returns `{"oom": True, "error": "out of memory
at batch B"}` instead of raising (`child_main`).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from clipforge import distributed as D
from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID, build, make_config
from clipforge.train.fast import adamw_kwargs, longest_sequence, resolve_amp, resolve_attention
from clipforge.train.loop import TrainConfig, train

from .plan import Plan

Part = Callable[[Plan, dict[str, Any]], dict[str, Any]]


# ------------------------------------------------------------------------------------------- helpers


def sync_for(device: torch.device) -> Callable[[], None]:
    """Wait for the device (CUDA launches are asynchronous); nothing on a CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where `amp` resolved to bf16, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()


def rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: torch.device, rss_at_start: int) -> dict[str, Any]:
    """The part's peak memory, labelled with what it is."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "memory_kind": "cuda max allocated",
                "peak_reserved_bytes": torch.cuda.max_memory_reserved()}
    # A measuring process starts from a copy of one that imported torch/transformers/clipforge: that is in it.
    return {"peak_memory_bytes": rss_bytes(), "memory_kind": "ru_maxrss, CPU peak RSS",
            "rss_at_start_bytes": rss_at_start}


def step_timing(stamps: list[float], warmup: int, batch: int) -> dict[str, Any]:
    """ms of each step after `warmup` (from the times each step started, the last one its end), the median and
    samples per second at the median."""
    kept = stamps[warmup:]
    ms = [(b - a) * 1e3 for a, b in zip(kept, kept[1:], strict=False)]
    median = statistics.median(ms)
    return {"step_ms": ms, "median_ms": median, "samples_per_s": batch / median * 1e3}


def synthetic_batch(config: Any, batch: int, seed: int) -> dict[str, Tensor]:
    """Seeded random pixels and full-length captions (BOS, random tokens, EOS) for a CLIP of `config`."""
    g = torch.Generator().manual_seed(seed)
    v, t = config.vision_config, config.text_config
    pixels = torch.randn(batch, v.num_channels, v.image_size, v.image_size, generator=g)
    ids = torch.randint(1, 49000, (batch, t.max_position_embeddings), generator=g)
    ids[:, 0], ids[:, -1] = BOS_TOKEN_ID, EOS_TOKEN_ID
    return {"pixel_values": pixels, "input_ids": ids}


class Indices(Dataset):
    """`n` items that are only their index: the batch itself comes from `Stamps` (no data path to time)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class Stamps:
    """collate_fn that returns the fixed batch and notes when `train()` asked for it: at the start of each step
    (no DataLoader workers), after waiting for the device, so consecutive stamps bracket one whole step."""

    def __init__(self, batch: dict[str, Tensor], sync: Callable[[], None]) -> None:
        self.batch, self.sync, self.stamps = batch, sync, []

    def __call__(self, items: list[int]) -> dict[str, Tensor]:
        self.sync()
        self.stamps.append(time.perf_counter())
        return self.batch


def run_train(model: nn.Module, batch: dict[str, Tensor], cfg: TrainConfig, device: torch.device,
              step_fn: Any = None) -> list[float]:
    """`clipforge.train.train` for `cfg.steps` steps on `batch` every step; the stamp of each step's start (the
    last step, which also writes the run's one log line, is never timed)."""
    stamps = Stamps(batch, sync_for(device))
    with tempfile.TemporaryDirectory(prefix="clipforge-gpu-") as out, D.preferred_device(device):
        train(model, Indices(cfg.batch_size * cfg.steps), cfg, out, collate_fn=stamps, step_fn=step_fn,
              progress=False)
    return stamps.stamps


def _adamw_name(kwargs: dict[str, Any]) -> str:
    return "fused" if kwargs.get("fused") else "foreach" if kwargs.get("foreach") else "for-loop"


# ------------------------------------------------------------------------------------------- train_step


def train_part(plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
    """One loop's step time and peak memory at `plan.clip`, `plan.train_batch` (`opts["loop"]`: clipforge/bare)."""
    device, rss0 = torch.device(plan.device), rss_bytes()
    batch = synthetic_batch(make_config(plan.clip), plan.train_batch, plan.seed)
    loop = _clipforge_loop if opts["loop"] == "clipforge" else _bare_loop
    stamps, about = loop(plan, batch, device)
    return {**step_timing(stamps, plan.warmup, plan.train_batch), **about, **peak_memory(device, rss0)}


def _clipforge_loop(plan: Plan, batch: dict[str, Tensor], device: torch.device) -> tuple[list[float], dict]:
    """`train()` with every default of `clipforge train` (amp, attention and AdamW "auto", clipping at 1)."""
    model = build(plan.clip, seed=plan.seed)
    total = plan.warmup + plan.steps + 1
    cfg = TrainConfig(steps=total, batch_size=plan.train_batch, log_every=total, save_every=0, eval_every=0)
    stamps = run_train(model, batch, cfg, device)
    amp = resolve_amp(cfg.amp, device)
    return stamps, {"amp": amp, "attention": resolve_attention(cfg.attention, amp, device, longest_sequence(model)),
                    "adamw": _adamw_name(adamw_kwargs(cfg.optimizer, model.parameters())),
                    "grad_clip": cfg.grad_clip}


def _bare_loop(plan: Plan, batch: dict[str, Tensor], device: torch.device) -> tuple[list[float], dict]:
    """The loop a transformers user writes: the batch to the device, forward with the loss, backward, clipping,
    AdamW (torch's default kernel) with clipforge's default hyper-parameters, so only the machinery differs."""
    model = build(plan.clip, seed=plan.seed).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    amp, sync = resolve_amp("auto", device), sync_for(device)
    stamps = []
    for _ in range(plan.warmup + plan.steps):
        sync()
        stamps.append(time.perf_counter())
        inputs = {k: v.to(device) for k, v in batch.items()}  # from ordinary host memory, every step
        with autocast(amp, device):
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    stamps.append(time.perf_counter())
    return stamps, {"amp": amp, "attention": model.config._attn_implementation,
                    "adamw": "torch's default (foreach on CUDA, for-loop on a CPU)", "grad_clip": 1.0}


# ------------------------------------------------------------------------------------------- moe_layer


def moe_part(plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
    """Median forward + backward ms of the MoE FFN (sparse, grouped) and two dense FFNs on the same tokens."""
    from transformers import CLIPVisionConfig

    from clipforge.models.clip_moe.moe_layer import MoEFFN

    from ..moe_layer.run import TwoDense

    device = torch.device(plan.device)
    amp = resolve_amp("auto", device)
    # Only the FFN fields matter; one head keeps the config's width/heads check quiet at any width.
    config = CLIPVisionConfig(hidden_size=plan.moe_hidden, intermediate_size=plan.moe_intermediate,
                              hidden_act=plan.moe_act, num_attention_heads=1)
    torch.manual_seed(plan.seed)
    sparse = MoEFFN(config, plan.experts, plan.top_k).to(device)
    grouped = MoEFFN(config, plan.experts, plan.top_k).to(device)
    grouped.load_state_dict(sparse.state_dict())
    grouped.dispatch = "grouped"
    layers: dict[str, nn.Module] = {"sparse": sparse, "grouped": grouped, "two_dense": TwoDense(config).to(device)}
    x = torch.randn(plan.moe_batch, plan.moe_seq, plan.moe_hidden, device=device, requires_grad=True)
    errors = {}
    for name in list(layers):  # one untimed pass each: a kernel this device lacks is recorded, not fatal
        try:
            _fwd_bwd(layers[name], x, amp, device)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            del layers[name]
    ms = _time_layers(layers, x, amp, device, plan.warmup, plan.steps)
    with torch.no_grad():
        chosen = sparse.route(x.reshape(-1, plan.moe_hidden))[2]
    return {"amp": amp, "ms": ms, "errors": errors, "grouped_kernel": grouped._aligned(),
            "expert_load": torch.bincount(chosen.reshape(-1), minlength=plan.experts).tolist()}


def _fwd_bwd(layer: nn.Module, x: Tensor, amp: str, device: torch.device) -> None:
    layer.zero_grad(set_to_none=True)
    x.grad = None
    with autocast(amp, device):
        out = layer(x)[0]
    out.float().sum().backward()


def _time_layers(layers: dict[str, nn.Module], x: Tensor, amp: str, device: torch.device, warmup: int,
                 steps: int) -> dict[str, float]:
    """Median ms per layer; the layers take turns within each repetition, so drift hits them alike."""
    sync = sync_for(device)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for i in range(warmup + steps):
        for name, layer in layers.items():
            sync()
            t0 = time.perf_counter()
            _fwd_bwd(layer, x, amp, device)
            sync()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------------- eval_throughput


class Images(Dataset):
    """`n` PIL images of `size` px (eight random ones, repeated): what embed_images reads from a user's dataset."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.n = n
        self.pool = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(8)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.pool[i % len(self.pool)]


def captions(n: int) -> list[str]:
    """`n` captions of a few words each (their tokens are what embed_texts pads to the context)."""
    colours, shapes = ("red", "green", "blue", "yellow", "purple"), ("cube", "sphere", "cone", "ring")
    return [f"a photo of {i % 7 + 1} {colours[i % 5]} {shapes[i % 4]}s left of a {colours[(i // 5) % 5]} "
            f"{shapes[(i // 4) % 4]}" for i in range(n)]


def eval_part(plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
    """Images/s and texts/s of embed_images / embed_texts (after one warm-up batch), and of the image tower alone
    on pixels already on the device (what preprocessing and the loader cost shows as the difference)."""
    from clipforge.eval.embed import autocast_for, embed_images, embed_texts, eval_mode, image_transform
    from clipforge.models.encode import image_features

    device, sync = torch.device(plan.device), sync_for(torch.device(plan.device))
    model = build(plan.clip, seed=plan.seed).to(device)
    size = model.config.vision_config.image_size
    texts = captions(plan.eval_texts)
    kw = {"batch_size": plan.eval_image_batch, "num_workers": plan.eval_workers, "progress": False}
    embed_images(model, Images(plan.eval_image_batch, size), **kw)  # warm-up: kernels, allocator, workers
    embed_texts(model, texts[:plan.eval_text_batch], batch_size=plan.eval_text_batch, progress=False)
    t0 = time.perf_counter()
    embed_images(model, Images(plan.eval_images, size), **kw)
    image_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_texts(model, texts, batch_size=plan.eval_text_batch, progress=False)
    text_s = time.perf_counter() - t0
    transform = image_transform(model)
    pool = Images(plan.eval_image_batch, size)
    pixels = torch.stack([transform(pool[i]) for i in range(len(pool))]).to(device)
    batches = max(1, plan.eval_images // plan.eval_image_batch)
    with eval_mode(model), autocast_for(device):
        image_features(model, pixels)
        sync()
        t0 = time.perf_counter()
        for _ in range(batches):
            image_features(model, pixels)
        sync()
        tower_s = time.perf_counter() - t0
    return {"dtype": "bf16 autocast" if device.type == "cuda" else "fp32", "image_s": image_s, "text_s": text_s,
            "images_per_s": plan.eval_images / image_s, "texts_per_s": plan.eval_texts / text_s,
            "tower_images": batches * plan.eval_image_batch, "tower_s": tower_s,
            "tower_images_per_s": batches * plan.eval_image_batch / tower_s}


# ------------------------------------------------------------------------------------------- router_checkpointing


def router_part(plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
    """A router-training step of a CLIP-MoE of `plan.router_clip` (every block MoE; random init, built on the
    device), with activation checkpointing on or off (`opts["checkpointing"]`): peak memory and ms per step."""
    from dataclasses import replace

    from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
    from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel
    from clipforge.moe.balance import RouterStep
    from clipforge.moe.routers import ROUTER_PATTERNS, RouterConfig
    from clipforge.train import options
    from clipforge.train.loss import ClipLoss

    device, rss0 = torch.device(plan.device), rss_bytes()
    config = CLIPMoEConfig.from_dense(make_config(plan.router_clip), num_experts=plan.experts, top_k=plan.top_k)
    torch.manual_seed(plan.seed)
    with torch.device(device):  # initialised where it runs: 1.2B parameters at L/14
        model = CLIPMoEModel(config)
    batch = synthetic_batch(config, plan.router_batch, plan.seed)
    total = plan.router_warmup + plan.router_steps + 1
    router = RouterConfig()  # router training's own schedule (fixed logit scale, label smoothing, no clipping)
    cfg = replace(router.schedule, steps=total, batch_size=plan.router_batch, warmup=0, log_every=total
                  ).train_config(trainable=list(router.trainable), save_every=0)
    step = RouterStep(ClipLoss(label_smoothing=cfg.label_smoothing), alpha=router.alpha, kind=router.balance_loss)
    with options.execution(grad_checkpointing=bool(opts["checkpointing"])):
        stamps = run_train(model, batch, cfg, device, step_fn=step)
    params = list(model.parameters())
    return {**step_timing(stamps, plan.router_warmup, plan.router_batch), **peak_memory(device, rss0),
            "checkpointing": bool(opts["checkpointing"]), "trainable_patterns": list(ROUTER_PATTERNS),
            "params": sum(p.numel() for p in params), "trainable_params": sum(p.numel() for p in params
                                                                               if p.requires_grad),
            "weights_bytes": sum(p.numel() * p.element_size() for p in params), "amp": resolve_amp(cfg.amp, device)}


# ------------------------------------------------------------------------------------------- probe and entry


def probe(plan: Plan, opts: dict[str, Any]) -> dict[str, Any]:
    """The machine and device the parts run on (asked in a measuring process: the launcher never touches CUDA)."""
    from .. import harness
    from .plan import registry_shape

    device = torch.device(plan.device)
    out = {"machine": harness.machine(opts.get("note")), "device": device.type, "amp": resolve_amp("auto", device),
           "cuda": torch.version.cuda, "shapes": {name: registry_shape(name) for name in (plan.clip, plan.router_clip)}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    return out


PARTS: dict[str, Part] = {"probe": probe, "train": train_part, "moe": moe_part, "eval": eval_part,
                          "router": router_part}


def is_oom(e: BaseException) -> bool:
    """CUDA's out-of-memory error, or a CPU allocation that failed."""
    text = str(e).lower()
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def child_main(part: str, plan: Plan, opts: dict[str, Any], conn: Any) -> None:
    """A measuring process's body: set the threads, run `part`, send its record (or its failure) back."""
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    try:
        result = PARTS[part](plan, opts)
    except Exception as e:  # noqa: BLE001 - every failure goes back to the launcher as a record
        batch = opts.get("batch")
        if is_oom(e):
            result = {"oom": True, "batch": batch, "error": f"out of memory at batch {batch}"}
        else:
            result = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": traceback.format_exc()[-4000:]}
    conn.send(result)
    conn.close()
