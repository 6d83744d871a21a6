"""A dataset read once, up front, and held in memory.

Rendering a procedural scene costs about as much as a training step of a small model on it; runs
that read the same items many times (benchmarks, several training stages, embedding for clustering)
read them once through this wrapper instead.
"""

from __future__ import annotations

from typing import Any

from .base import ImageTextDataset, Sample


class Cached(ImageTextDataset):
    """Every item of `dataset` read once; same items, same order; `name` says what it holds."""

    def __init__(self, dataset: Any, name: str | None = None) -> None:
        self.name = name or getattr(dataset, "name", type(dataset).__name__)
        self.classnames = getattr(dataset, "classnames", None)
        self.templates = getattr(dataset, "templates", None)
        self.items: list[Sample] = [dataset[i] for i in range(len(dataset))]
        from .loader import end_pass

        end_pass(dataset)  # a user dataset reports the bad images this read skipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        return self.items[i]
