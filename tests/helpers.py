"""Small shared test fixtures: seeded inputs for tiny models."""

from __future__ import annotations

import torch

from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID


def fake_batch(n: int = 4, image_size: int = 32, context: int = 16, seed: int = 0, channels: int = 3):
    """Random pixels and token ids shaped like real ones: bos, words, eos, zero padding."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, channels, image_size, image_size, generator=g)
    ids = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, context - 1, (1,), generator=g))
        ids[i, 0] = BOS_TOKEN_ID
        ids[i, 1 : 1 + length] = torch.randint(1, 49000, (length,), generator=g)
        ids[i, 1 + length] = EOS_TOKEN_ID
    return pixels, ids
