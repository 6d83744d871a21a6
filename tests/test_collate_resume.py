"""A resumed run's DataLoader workers pick the same captions as the uninterrupted run's did."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.data.base import Sample
from clipforge.data.collate import Collator


class _ManyCaptions(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> Sample:
        return Sample(Image.new("RGB", (8, 8)), [f"caption {i} take {k}" for k in range(5)])


def _ids(batches: list[list[int]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)  # the loop reseeds its loader generator per pass the same way
    loader = DataLoader(_ManyCaptions(), batch_sampler=batches, num_workers=2, generator=g,
                        collate_fn=Collator(None, 16, caption="random"))
    return [b["input_ids"] for b in loader]


@pytest.mark.slow
def test_worker_caption_draws_do_not_depend_on_the_batch_position():
    batches = [list(range(i, i + 4)) for i in range(0, 24, 4)]
    whole = _ids(batches, seed=7)
    resumed = _ids(batches[3:], seed=7)  # a run resumed at the fourth batch: other workers take these batches
    assert all(torch.equal(a, b) for a, b in zip(whole[3:], resumed))
    assert not all(torch.equal(a, b) for a, b in zip(whole, _ids(batches, seed=8)))  # a new pass draws anew
