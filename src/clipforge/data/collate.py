"""Turn `Sample`s into model inputs: preprocess images, pick and tokenise one caption per image.

Text batches are trimmed to the longest caption in the batch: CLIP's text tower is causal and pools
at the end-of-text token, so the padding columns after every caption's end change nothing but cost
compute (on the demo data they are most of the context).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import Sample


class Collator:
    """`collate_fn` for image-text training and evaluation.

    `caption="random"` draws one of a sample's captions with the torch RNG (so a resumed run, which
    restores RNG state, draws the same ones); `"first"` always takes the first.
    """

    def __init__(self, transform: Callable | None, context_length: int, caption: str = "random", trim: bool = True):
        self.transform = transform
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
            ids = tokenize(texts, context_length=self.context_length)
            batch["input_ids"] = trim_padding(ids) if self.trim else ids
        if all(s.label is not None for s in samples):
            batch["labels"] = torch.tensor([s.label for s in samples], dtype=torch.long)
        return batch

    def _pick(self, captions: list[str]) -> str:
        if len(captions) == 1 or self.caption == "first":
            return captions[0]
        return captions[int(torch.randint(len(captions), (1,)))]


def trim_padding(ids: Tensor, pad_id: int = 0) -> Tensor:
    """Drop trailing columns that are padding in every row (keeps at least one column)."""
    nonpad = (ids != pad_id).any(0).nonzero()
    last = int(nonpad.max()) + 1 if len(nonpad) else 1
    return ids[:, :last].contiguous()
