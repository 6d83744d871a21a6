"""What a model costs: parameters stored and active per tower, analytic FLOPs, wall time."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .models.encode import model_kind


def _numel(params) -> int:
    return int(sum(p.numel() for p in params))


# --- compute: analytic forward FLOPs and wall time -------------------------------------------------
#
# Forward FLOPs of one tower on one sample, counting multiply-adds as 2 FLOPs:
#   per block: 2·(4d² + 2·d·m)·T  (q, k, v, out projections and the two MLP matmuls, every token)
#            + 2·2·T²·d           (QKᵀ and attention·V; full T×T even for the causal text tower: an
#                                  upper bound, as the masked half is computed anyway)
#   vision stem: 2·(C·p²)·d per patch (the patch-embedding convolution)
#   projection:  2·d·proj, once (the pooled token)
# Layer norms, softmax, GELU, biases, embedding look-ups and the loss are left out: on these model
# sizes they are a few percent. T = (image/patch)² + 1 for images; for captions the caller passes the
# tokens actually processed (clipforge trims each batch's padding), else the full context is used.
# Training ≈ 3× forward (backward costs about twice the forward: Kaplan et al. 2020, Chinchilla).

TRAIN_FLOPS_FACTOR = 3


def _tower_cfg(config_or_model, kind: str):
    cfg = getattr(config_or_model, "config", config_or_model)
    name = "vision_config" if kind == "image" else "text_config"
    return getattr(cfg, name, cfg), getattr(cfg, "projection_dim", None)


def flops_per_sample(config_or_model, kind: str, tokens: int | None = None) -> int:
    """Analytic forward FLOPs of one image (`kind="image"`) or one caption (`"text"`) through its tower.

    `config_or_model`: a `CLIPConfig`, a tower config, or a model holding one (`.config`).
    `tokens`: caption tokens processed (default the full context); ignored for images. `kind="clip"`
    is one image plus one caption. See the comment above for what is counted.
    """
    if kind == "clip":
        return flops_per_sample(config_or_model, "image") + flops_per_sample(config_or_model, "text", tokens)
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image', 'text' or 'clip', got {kind!r}")
    cfg, proj = _tower_cfg(config_or_model, kind)
    d, m, n = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_hidden_layers)
    proj = int(getattr(cfg, "projection_dim", None) or proj or d)
    if kind == "image":
        patches = (int(cfg.image_size) // int(cfg.patch_size)) ** 2
        t = patches + 1
        stem = 2 * int(cfg.num_channels) * int(cfg.patch_size) ** 2 * d * patches
    else:
        t = int(tokens if tokens is not None else cfg.max_position_embeddings)
        stem = 0
    per_block = 2 * (4 * d * d + 2 * d * m) * t + 4 * t * t * d
    return int(stem + n * per_block + 2 * d * proj + _moe_extra(config_or_model, kind, d, m, t))


def _moe_extra(config_or_model, kind: str, d: int, m: int, t: int) -> int:
    """Extra forward FLOPs of a CLIP-MoE over its dense twin: per MoE block and token, top_k − 1 more
    FFNs (2·2·d·m each) and the router (2·d·E). Zero for dense models."""
    cfg = getattr(config_or_model, "config", config_or_model)
    if not hasattr(cfg, "top_k") or not hasattr(cfg, "moe_layers"):
        return 0
    blocks = len(cfg.moe_layers("vision" if kind == "image" else "text"))
    return blocks * t * ((int(cfg.top_k) - 1) * 4 * d * m + 2 * d * int(cfg.num_experts))


@torch.no_grad()
def latency(model: nn.Module, kind: str, batch_size: int = 32, tokens: int | None = None, repeats: int = 10,
            warmup: int = 2) -> dict[str, float]:
    """Measured forward wall time of one tower (`kind` "image" or "text") on a synthetic batch.

    Median over `repeats` timed calls after `warmup` untimed ones, in eval mode on the model's device;
    returns milliseconds per batch and per sample. Captions are `tokens` long (default the context).
    """
    from .models.encode import image_features, text_features
    from .models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cfg, _ = _tower_cfg(model, kind)
    gen = torch.Generator().manual_seed(0)
    if kind == "image":
        size = int(cfg.image_size)
        x = torch.randn(batch_size, int(cfg.num_channels), size, size, generator=gen).to(device)
        fn = lambda: image_features(model, x)  # noqa: E731
    elif kind == "text":
        t = int(tokens or cfg.max_position_embeddings)
        ids = torch.randint(1, 49000, (batch_size, t), generator=gen)
        ids[:, 0], ids[:, -1] = BOS_TOKEN_ID, EOS_TOKEN_ID
        ids = ids.to(device)
        fn = lambda: text_features(model, ids)  # noqa: E731
    else:
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    model.train(was_training)
    ms = 1000 * sorted(times)[len(times) // 2]
    return {"ms_per_batch": ms, "ms_per_sample": ms / batch_size, "batch_size": batch_size}


def train_flops(forward_flops: float, samples: float) -> float:
    """Training FLOPs of `samples` samples at `forward_flops` each (≈ 3× forward)."""
    return TRAIN_FLOPS_FACTOR * forward_flops * samples


class Timer:
    """`with Timer() as t: ...` then `t.seconds` (wall time, `time.perf_counter`); readable while running."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> Timer:
        self.start, self.end = time.perf_counter(), None
        return self

    def __exit__(self, *exc) -> bool:
        self.end = time.perf_counter()
        return False

    @property
    def seconds(self) -> float:
        if self.start is None:
            return 0.0
        return (self.end if self.end is not None else time.perf_counter()) - self.start


def active_params(model: nn.Module) -> int:
    """Parameters a token passes through: all of them, minus the unused experts of each mixture-of-
    experts block (modules with `experts` and `top_k`: a token runs top_k of them)."""
    idle = 0
    for module in model.modules():
        experts, k = getattr(module, "experts", None), getattr(module, "top_k", None)
        if isinstance(experts, nn.ModuleList) and isinstance(k, int) and len(experts) > k:
            idle += _numel(experts[0].parameters()) * (len(experts) - k)
    return _numel(model.parameters()) - idle


def model_costs(model: nn.Module, latency_batch: int = 64, repeats: int = 5, caption_tokens: int = 16
                ) -> dict[str, float | int]:
    """Parameters stored / active per token, analytic forward FLOPs and measured latency per image and
    per caption (for the towers the model has; captions at `caption_tokens` tokens)."""
    kind = model_kind(model)
    has_v, has_t = kind in ("clip", "vision"), kind in ("clip", "text")
    out: dict[str, float | int] = {"params_stored": _numel(model.parameters()),
                                   "params_active_per_token": active_params(model), "caption_tokens": caption_tokens}
    if has_v:
        out["flops_per_image"] = flops_per_sample(model, "image")
        out["latency_image_ms"] = latency(model, "image", latency_batch, repeats=repeats)["ms_per_sample"]
    if has_t:
        out["flops_per_caption"] = flops_per_sample(model, "text", caption_tokens)
        out["latency_caption_ms"] = latency(model, "text", latency_batch, caption_tokens, repeats)["ms_per_sample"]
    out["latency_batch"] = latency_batch
    return out


# --- the tokens a training batch really processes -----------------------------------------------------


def caption_tokens(dataset: Any, context: int, batch_size: int, n_batches: int = 8, seed: int = 0) -> float:
    """Caption tokens a trimmed batch processes per sample: the mean, over a few random batches, of the
    longest caption in the batch (bos and eos included). Only captions are read, never images."""
    from .data.collate import trim_padding
    from .models.tokenizer import tokenize

    n = len(dataset)
    if n == 0:
        return float(context)
    g = torch.Generator().manual_seed(seed)
    lengths = []
    for _ in range(n_batches):
        idx = torch.randint(n, (min(batch_size, n),), generator=g).tolist()
        captions = [_first_caption(dataset, i) for i in idx]
        lengths.append(trim_padding(tokenize(captions, context_length=context)).shape[1])
    return sum(lengths) / len(lengths)


def _first_caption(dataset: Any, i: int) -> str:
    # Scenes can caption without rendering; every other dataset yields a Sample.
    inner, j = dataset, i
    if hasattr(inner, "datasets") and hasattr(inner, "_starts"):  # ConcatImageText
        import bisect

        k = bisect.bisect_right(inner._starts, i) - 1
        inner, j = inner.datasets[k], i - inner._starts[k]
    if hasattr(inner, "captions_at"):
        return inner.captions_at(j)[0]
    return inner[j].captions[0]


def forward_flops(config_or_model, kind: str, tokens: float) -> int:
    """Forward FLOPs per sample of a model of `kind` ("clip", "vision" or "text") at `tokens` caption tokens."""
    if kind not in ("clip", "vision", "text"):
        raise ValueError(f"kind must be clip, vision or text, got {kind!r}")
    return flops_per_sample(config_or_model, {"clip": "clip", "vision": "image", "text": "text"}[kind], round(tokens))
