"""Turn images and texts into normalised embeddings with any clipforge model.

Both functions run without gradients in eval mode (the model's previous mode is restored), batch
their input, and return normalised float32 embeddings on the CPU, so large evaluation sets do not
pile up on the accelerator. On CUDA they run under bf16 autocast (`amp="auto"`).

A dataset (anything with `__len__`/`__getitem__`, or an `IterableDataset`) is read through a
DataLoader: `num_workers` worker processes decode and preprocess, pinned memory on CUDA. Workers
read copies of the dataset, so `embed_images` uses them only when asked (a wrapper that records what
it serves, like `tasks._Recorder`, would record nothing in the main process); `image_batches` with
captions carries what a pass needs back in the batch and may use the process default. With
`shard=True` under torchrun each rank embeds its own contiguous 1/world of the items and the pieces
are gathered, so every rank gets all of them in order; every rank must then make the same call.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.base import as_image
from ..errors import ClipforgeError
from ..models.encode import image_features, normalized, text_features

# Show a progress bar only when there are at least this many batches: short runs (tests, small
# diagnostics) stay quiet.
PROGRESS_MIN_BATCHES = 8


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_context_length(model: nn.Module) -> int:
    """The text context length of a CLIP or text-tower model (its position-embedding count)."""
    cfg = model.config
    sub = getattr(cfg, "text_config", None) or cfg
    n = getattr(sub, "max_position_embeddings", None)
    if n is None:
        raise ClipforgeError(f"{type(model).__name__} has no text tower (no max_position_embeddings)")
    return int(n)


def image_transform(model: nn.Module) -> Callable[[Image.Image], Tensor]:
    """The preprocessing pipeline recorded in the model's config."""
    from ..models.preprocess import (
        transform_for,  # imported late: an optional sibling module
    )

    return transform_for(model.config)


@contextmanager
def eval_mode(model: nn.Module):
    """Context: the model in eval mode without gradients; its previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _bar(n_items: int | None, batch_size: int, desc: str, progress: bool | None):
    if progress is None:
        progress = n_items is not None and n_items >= PROGRESS_MIN_BATCHES * batch_size
    return tqdm(total=n_items, desc=desc, unit="item", leave=False, disable=not progress)


def autocast_for(device: torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast on CUDA for `amp` "auto" (bf16 where the GPU has it, else fp16: inference needs no loss
    scaling) or "bf16"; nothing otherwise (CPU, or `amp="off"`)."""
    if amp not in ("auto", "bf16", "off"):
        raise ClipforgeError(f"amp must be auto, bf16 or off, got {amp!r}")
    if device.type == "cuda" and amp != "off":
        from ..train.fast import cuda_has_bf16

        bf16 = amp == "bf16" or cuda_has_bf16(device)
        return torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
    return contextlib.nullcontext()


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> range:
    """Rank `rank`'s contiguous share of `n` items (sizes differ by at most one); this process's by default."""
    from .. import distributed as D

    rank = D.rank() if rank is None else rank
    world = D.world_size() if world is None else world
    return range(rank * n // world, (rank + 1) * n // world)


def _is_dataset(items: Any) -> bool:
    from torch.utils.data import Dataset, IterableDataset

    return isinstance(items, (Dataset, IterableDataset)) or (
        hasattr(items, "__len__") and hasattr(items, "__getitem__") and not isinstance(items, (list, tuple)))


class _Rows:
    """`dataset[indices[i]]`: one rank's share of a map-style dataset (reporting passes to the dataset)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]


def image_batches(dataset: Any, transform: Callable, batch_size: int, device: torch.device,
                  workers: int = 0, captions: bool = False,
                  indices: Sequence[int] | None = None) -> Iterable[dict[str, Any]]:
    """Batches `{"pixel_values", ["captions"]}` of a dataset (or its `indices`) through a DataLoader."""
    from torch.utils.data import DataLoader, IterableDataset

    from ..data.collate import EmbedCollator
    from ..data.loader import reporting

    iterable = isinstance(dataset, IterableDataset)
    view = dataset if iterable or indices is None else _Rows(dataset, indices)
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=EmbedCollator(transform, captions), pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    return reporting(loader, dataset)


def gather_rows(x: Tensor, n: int) -> Tensor:
    """Every rank's `shard_range` rows of an [n, ...] result, concatenated in order on every rank."""
    from .. import distributed as D

    if D.world_size() == 1:
        return x
    import torch.distributed as dist

    world = D.world_size()
    rows = max(len(shard_range(n, r, world)) for r in range(world))
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    pad = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=dev)
    pad[: x.shape[0]] = x.to(dev)
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[: len(shard_range(n, r, world))] for r, p in enumerate(parts)]).cpu()


def embed_images(
    model: nn.Module,
    images: Iterable[Any],
    transform: Callable[[Image.Image], Tensor] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    *,
    num_workers: int | None = None,
    shard: bool = False,
    amp: str = "auto",
) -> Tensor:
    """Normalised image embeddings [N, D] (float32, CPU).

    `images` is a list of PIL images or a dataset whose items are `Sample`s, images or
    `(image, ...)` tuples. `transform` defaults to the model's own preprocessing. `device` defaults
    to the model's device. A bar is shown for long runs (or as `progress` says). `num_workers`,
    `shard`, `amp`: see the module docstring.
    """
    if batch_size < 1:
        raise ClipforgeError(f"batch_size must be positive, got {batch_size}")
    transform = transform if transform is not None else image_transform(model)
    device = torch.device(device) if device is not None else model_device(model)
    n = len(images) if hasattr(images, "__len__") else None
    # A stream (no length) splits itself over ranks; a sized dataset is cut into contiguous shares.
    split = bool(shard) and n is not None and _is_dataset(images)
    part = shard_range(n) if split and n is not None else None
    out: list[Tensor] = []
    with eval_mode(model), autocast_for(device, amp), _bar(n if part is None else len(part), batch_size,
                                                           "images", progress) as bar:
        for pixels in _pixel_batches(images, transform, batch_size, device, num_workers, part):
            feats = image_features(model, pixels.to(device, non_blocking=True))
            out.append(normalized(feats.float()).cpu())
            bar.update(pixels.shape[0])
    if not out and not split:
        raise ClipforgeError("no images to embed")
    local = torch.cat(out) if out else torch.zeros(0, 0)
    if split and n is not None:
        return gather_rows(local, n)
    if shard and n is None:  # a stream: each rank read its own part; concatenate in rank order
        from .. import distributed as D

        return torch.cat([p for p in D.all_gather_object(local) if p.numel()])
    return local


def _pixel_batches(images: Any, transform: Callable, batch_size: int, device: torch.device,
                   num_workers: int | None, part: range | None) -> Iterator[Tensor]:
    if _is_dataset(images):
        for batch in image_batches(images, transform, batch_size, device, num_workers or 0, indices=part):
            yield batch["pixel_values"]
        return
    for batch in _batches(iter(images), batch_size):
        yield torch.stack([transform(as_image(x)) for x in batch])


def embed_texts(
    model: nn.Module,
    texts: Sequence[str],
    context_length: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    *,
    shard: bool = False,
    amp: str = "auto",
) -> Tensor:
    """Normalised text embeddings [N, D] (float32, CPU).

    `context_length` defaults to the model's. Texts are tokenised with clipforge's CLIP tokenizer
    (truncated to the context, end-of-text token kept). `shard`, `amp`: see the module docstring.
    """
    from ..models.tokenizer import (  # imported late: an optional sibling module
        tokenize,
        tokenizer_for,
    )

    if batch_size < 1:
        raise ClipforgeError(f"batch_size must be positive, got {batch_size}")
    if len(texts) == 0:
        raise ClipforgeError("no texts to embed")
    ctx = context_length or model_context_length(model)
    device = torch.device(device) if device is not None else model_device(model)
    n = len(texts)
    mine = [texts[i] for i in shard_range(n)] if shard else list(texts)  # this rank's contiguous share
    out: list[Tensor] = []
    with eval_mode(model), autocast_for(device, amp), _bar(len(mine), batch_size, "texts", progress) as bar:
        for a in range(0, len(mine), batch_size):
            ids = tokenize(mine[a:a + batch_size], ctx, tokenizer_for(model)).to(device)
            # No attention mask: CLIP's text tower is causal and pools at the end-of-text token, so
            # the padding after it cannot change the result; and padding id 0 is also the real
            # token "!", so a mask built from `ids != 0` would be wrong.
            out.append(normalized(text_features(model, ids).float()).cpu())
            bar.update(ids.shape[0])
    local = torch.cat(out) if out else torch.zeros(0, 0)
    return gather_rows(local, n) if shard else local
