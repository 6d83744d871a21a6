"""Turn images and texts into normalised embeddings with any clipforge model.

Both functions run without gradients in eval mode (the model's previous mode is restored), batch
their input, and return normalised float32 embeddings on the CPU, so large evaluation sets do not
pile up on the accelerator.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

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
    from ..models.preprocess import transform_for  # imported late: an optional sibling module

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


def as_image(item: Any) -> Image.Image:
    """The PIL image of a dataset item: a `Sample`, a bare image, or an `(image, ...)` tuple."""
    if isinstance(item, Image.Image):
        return item
    if hasattr(item, "image"):
        return item.image
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Image.Image):
        return item[0]
    raise ClipforgeError(f"cannot find an image in a dataset item of type {type(item).__name__}")


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _iterate(items: Iterable[Any] | Sequence[Any]) -> Iterable[Any]:
    # A torch Dataset has __getitem__/__len__ but its iteration protocol is not guaranteed to stop
    # (it relies on IndexError); index it explicitly.
    if hasattr(items, "__len__") and hasattr(items, "__getitem__"):
        return (items[i] for i in range(len(items)))
    return iter(items)


def _bar(n_items: int | None, batch_size: int, desc: str, progress: bool | None):
    if progress is None:
        progress = n_items is not None and n_items >= PROGRESS_MIN_BATCHES * batch_size
    return tqdm(total=n_items, desc=desc, unit="item", leave=False, disable=not progress)


def embed_images(
    model: nn.Module,
    images: Iterable[Any],
    transform: Callable[[Image.Image], Tensor] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Normalised image embeddings [N, D] (float32, CPU).

    `images` is a list of PIL images or a dataset whose items are `Sample`s, images or
    `(image, ...)` tuples. `transform` defaults to the model's own preprocessing. `device` defaults
    to the model's device. A bar is shown for long runs (or as `progress` says).
    """
    if batch_size < 1:
        raise ClipforgeError(f"batch_size must be positive, got {batch_size}")
    transform = transform if transform is not None else image_transform(model)
    device = torch.device(device) if device is not None else model_device(model)
    n = len(images) if hasattr(images, "__len__") else None
    out: list[Tensor] = []
    with eval_mode(model), _bar(n, batch_size, "images", progress) as bar:
        for batch in _batches(_iterate(images), batch_size):
            pixels = torch.stack([transform(as_image(x)) for x in batch]).to(device)
            out.append(normalized(image_features(model, pixels)).cpu())
            bar.update(len(batch))
    if not out:
        raise ClipforgeError("no images to embed")
    return torch.cat(out)


def embed_texts(
    model: nn.Module,
    texts: Sequence[str],
    context_length: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Normalised text embeddings [N, D] (float32, CPU).

    `context_length` defaults to the model's. Texts are tokenised with clipforge's CLIP tokenizer
    (truncated to the context, end-of-text token kept).
    """
    from ..models.tokenizer import tokenize  # imported late: an optional sibling module

    if batch_size < 1:
        raise ClipforgeError(f"batch_size must be positive, got {batch_size}")
    if len(texts) == 0:
        raise ClipforgeError("no texts to embed")
    ctx = context_length or model_context_length(model)
    device = torch.device(device) if device is not None else model_device(model)
    out: list[Tensor] = []
    with eval_mode(model), _bar(len(texts), batch_size, "texts", progress) as bar:
        for a in range(0, len(texts), batch_size):
            ids = tokenize(list(texts[a:a + batch_size]), ctx).to(device)
            # No attention mask: CLIP's text tower is causal and pools at the end-of-text token, so
            # the padding after it cannot change the result; and padding id 0 is also the real
            # token "!", so a mask built from `ids != 0` would be wrong.
            out.append(normalized(text_features(model, ids)).cpu())
            bar.update(ids.shape[0])
    return torch.cat(out)
