"""Turn `Sample`s into model inputs: preprocess images, pick and tokenise one caption per image.

Text batches are trimmed to the longest caption in the batch: CLIP's text tower is causal and pools
at the end-of-text token, so the padding columns after every caption's end change nothing but cost
compute (on the demo data they are most of the context).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import ClipforgeError
from .base import Sample


class Collator:
    """`collate_fn` for image-text training and evaluation.

    `caption="random"` draws one of a sample's captions; `"first"` always takes the first. The draw is
    reproducible on resume: in the main process it uses the torch RNG (a checkpoint restores it); in a
    DataLoader worker it is a function of the pass's seed and the sample alone (`_worker_pick`), since a
    resumed run's fresh workers start their RNG streams anew and take other batches.
    """

    def __init__(self, transform: Callable | None, context_length: int, caption: str = "random", trim: bool = True,
                 tokenizer: Any = None):
        self.transform = transform
        self.tokenizer = tokenizer  # None: the packaged CLIP tokenizer (`models.tokenizer.tokenizer_for`)
        self.context_length = context_length
        self.caption = caption
        self.trim = trim

    def __call__(self, samples: list[Sample]) -> dict[str, Tensor]:
        from ..models.tokenizer import tokenize

        batch: dict[str, Tensor] = {}
        if self.transform is not None:
            batch["pixel_values"] = torch.stack([self.transform(s.image) for s in samples])
        if self.context_length:
            texts = [self._pick(s.captions) for s in samples]
            ids = tokenize(texts, context_length=self.context_length, tokenizer=self.tokenizer)
            batch["input_ids"] = trim_padding(ids) if self.trim else ids
        if all(s.label is not None for s in samples):
            batch["labels"] = torch.tensor([s.label for s in samples], dtype=torch.long)
        return batch

    def _pick(self, captions: list[str]) -> str:
        if len(captions) == 1 or self.caption == "first":
            return captions[0]
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            return captions[_worker_pick(worker.seed - worker.id, captions)]
        return captions[int(torch.randint(len(captions), (1,)))]


def _worker_pick(pass_seed: int, captions: list[str]) -> int:
    """Which caption a worker takes: drawn from (the pass's base seed, the captions), whichever worker and
    batch position it falls on (the base seed is the same for every worker of a pass)."""
    key = zlib.crc32("\x1f".join(captions).encode("utf-8"), pass_seed & 0xFFFFFFFF)
    return int(torch.randint(len(captions), (1,), generator=torch.Generator().manual_seed(key)))


def trim_padding(ids: Tensor, pad_id: int = 0) -> Tensor:
    """Drop trailing columns that are padding in every row (keeps at least one column)."""
    nonpad = (ids != pad_id).any(0).nonzero()
    last = int(nonpad.max()) + 1 if len(nonpad) else 1
    return ids[:, :last].contiguous()


class EmbedCollator:
    """`collate_fn` of embedding passes: preprocessed pixels, plus each item's captions when asked.

    Runs in DataLoader workers, so images are decoded and transformed off the main process; the
    captions travel with the batch (a worker's copy of the dataset cannot hand them back otherwise).
    Items may be `Sample`s, bare images or `(image, ...)` tuples.
    """

    def __init__(self, transform: Callable, captions: bool = False) -> None:
        self.transform = transform
        self.captions = captions

    def __call__(self, items: list) -> dict:
        from .base import as_image

        batch: dict = {"pixel_values": torch.stack([self.transform(as_image(x)) for x in items])}
        if self.captions:
            caps = []
            for i, x in enumerate(items):
                c = getattr(x, "captions", None)
                if not c:
                    meta = getattr(x, "meta", {}) or {}
                    raise ClipforgeError(f"dataset item {meta.get('id', i)} has no captions; "
                                         "this pass embeds image-text pairs")
                caps.append([c] if isinstance(c, str) else list(c))
            batch["captions"] = caps
        return batch
