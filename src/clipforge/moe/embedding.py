"""The MCL embedding pass: a whole dataset's image and text embeddings, sharded over ranks.

Each rank embeds its own contiguous 1/world of the samples (DataLoader workers decode and preprocess,
bf16 autocast on CUDA), and the rows are gathered once, to rank 0 or to every rank. Embeddings are held
in fp16 and, above a size threshold, in a memory-mapped temporary file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ClipforgeError

log = logging.getLogger("clipforge.moe")

SPILL_BYTES = int(os.environ.get("CLIPFORGE_SPILL_BYTES", 2 << 30))  # embeddings above this go to a memmap


def _store(n: int, d: int, dtype: Any, spill_bytes: int, spill_dir: str | os.PathLike | None) -> np.ndarray:
    """An [n, d] array in memory, or, above `spill_bytes`, in a memory-mapped temporary file (deleted on close)."""
    if n * d * np.dtype(dtype).itemsize <= spill_bytes:
        return np.zeros((n, d), dtype=dtype)
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
    log.info("embeddings of %d samples spill to a memory-mapped file in %s", n, spill_dir or tempfile.gettempdir())
    return np.memmap(tempfile.TemporaryFile(dir=spill_dir), dtype=dtype, mode="w+", shape=(n, d))


def _text_embeddings(model: nn.Module, captions: list[list[str]], caption: str, batch_size: int,
                     device: Any, progress: bool | None) -> torch.Tensor:
    from ..eval.embed import embed_texts

    if caption == "first":
        return embed_texts(model, [c[0] for c in captions], batch_size=batch_size, device=device, progress=progress)
    flat = [c for caps in captions for c in caps]
    owner = torch.repeat_interleave(torch.tensor([len(c) for c in captions]))
    e = embed_texts(model, flat, batch_size=batch_size, device=device, progress=progress)
    w = torch.zeros(len(captions), e.shape[1]).index_add_(0, owner, e)
    return torch.nn.functional.normalize(w, dim=-1)


def _gather_rows(local: np.ndarray, n: int, out: np.ndarray | None, to_all: bool, chunk: int = 16_384) -> None:
    """Fill `out` [n, D] with every rank's `shard_range` rows, a chunk of rows per collective.

    `to_all`: every rank receives (`out` given everywhere); else only rank 0 (`out` None elsewhere).
    Rows travel as raw bytes (uint8), which every backend moves unchanged whatever `out`'s dtype.
    """
    import torch.distributed as dist

    from ..eval.embed import shard_range

    world, rank = dist.get_world_size(), dist.get_rank()
    ranges = [shard_range(n, r, world) for r in range(world)]
    rows, width = max(len(r) for r in ranges), local.shape[1] * local.dtype.itemsize
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for a in range(0, rows, chunk):
        m = min(chunk, rows - a)
        send = torch.zeros((m, width), dtype=torch.uint8)
        mine = local[a:a + m]
        send[: len(mine)] = torch.from_numpy(np.ascontiguousarray(mine).view(np.uint8))
        send = send.to(dev)
        parts = [torch.empty_like(send) for _ in range(world)] if (to_all or rank == 0) else None
        if to_all:
            dist.all_gather(parts, send)
        else:
            dist.gather(send, parts, dst=0)
        if parts is None or out is None:
            continue
        for r, part in enumerate(parts):
            take = max(0, min(m, len(ranges[r]) - a))
            if take:
                start = ranges[r].start + a
                out[start:start + take] = part[:take].cpu().numpy().view(out.dtype)


def embed_dataset(model: nn.Module, dataset: Any, batch_size: int = 256, device: str | torch.device | None = None,
                  caption: str = "first", progress: bool | None = None, *, num_workers: int | None = None,
                  shard: bool = True, gather: str = "all", dtype: Any = np.float16, spill_bytes: int | None = None,
                  spill_dir: str | os.PathLike | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Image and text embeddings (L2-normalised, `dtype` numpy, [N, D] each) of a whole map-style dataset.

    Eval mode and the model's own deterministic preprocessing (no augmentation); bf16 autocast on CUDA.
    A sample with several captions is represented by its first (`caption="first"`, what training pairs
    by default and what a fixed pseudo-label needs: one deterministic text per sample) or by the
    renormalised mean of all its captions' embeddings (`caption="mean"`).

    One pass over the data (one image decode per sample) gives both modalities, read by
    `num_workers` DataLoader workers (None: the process default). Under torchrun with `shard`, each
    rank embeds its own contiguous 1/world of the samples, and the rows are gathered once: to every
    rank (`gather="all"`) or to rank 0 only (`gather="main"`: the others get `(None, None)`).
    Embeddings are held as `dtype` (fp16 by default: half the memory, far below k-means' resolution)
    and, above `spill_bytes` (default `SPILL_BYTES`, env CLIPFORGE_SPILL_BYTES), in a memory-mapped
    temporary file in `spill_dir`.
    """
    from .. import distributed as D
    from ..data.loader import worker_count
    from ..eval.embed import (
        autocast_for,
        eval_mode,
        image_batches,
        image_transform,
        model_device,
        shard_range,
    )
    from ..models.encode import image_features, normalized

    if caption not in ("first", "mean"):
        raise ClipforgeError(f"caption must be 'first' or 'mean', got {caption!r}")
    if gather not in ("all", "main"):
        raise ClipforgeError(f"gather must be 'all' or 'main', got {gather!r}")
    n = len(dataset)
    if n == 0:
        raise ClipforgeError("no images to embed")
    spill = SPILL_BYTES if spill_bytes is None else int(spill_bytes)
    world = D.world_size() if shard else 1
    part = shard_range(n) if world > 1 else range(n)
    device = torch.device(device) if device is not None else model_device(model)
    transform = image_transform(model)
    u: np.ndarray | None = None
    captions: list[list[str]] = []
    filled = 0
    with eval_mode(model), autocast_for(device):
        for batch in image_batches(dataset, transform, batch_size, device, worker_count(num_workers),
                                   captions=True, indices=part):
            e = normalized(image_features(model, batch["pixel_values"].to(device, non_blocking=True)).float())
            if u is None:
                u = _store(len(part), e.shape[1], dtype, spill, spill_dir)
            u[filled:filled + e.shape[0]] = e.cpu().numpy().astype(dtype, copy=False)
            filled += e.shape[0]
            captions += batch["captions"]
    if u is None or filled != len(part):
        raise ClipforgeError(f"embedding pass read {filled} of {len(part)} samples")
    w_local = _text_embeddings(model, captions, caption, 1024, device, progress).numpy().astype(dtype)
    if world == 1:
        w = _store(n, w_local.shape[1], dtype, spill, spill_dir)
        w[:] = w_local
        return u, w
    receive = gather == "all" or D.rank() == 0
    u_all = _store(n, u.shape[1], dtype, spill, spill_dir) if receive else None
    w_all = _store(n, w_local.shape[1], dtype, spill, spill_dir) if receive else None
    _gather_rows(u, n, u_all, gather == "all")
    _gather_rows(w_local, n, w_all, gather == "all")
    return u_all, w_all
