"""Shared fixtures for the training tests, and a worker the resume test runs (and kills) in a subprocess.

Run as: python -c "import _train_worker; _train_worker.main([OUT_DIR, THREADS, SLOW_FROM_STEP])"
with tests/ on sys.path. The worker trains with `resume_config()` and, from step SLOW_FROM_STEP on,
sleeps inside the step so the parent can kill it at a known point.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch.utils.data import Dataset

from clipforge.models.registry import EOS_TOKEN_ID, build, get_config_dict
from clipforge.train import ClipLoss, ClipStep, TrainConfig, train


class SyntheticPairs(Dataset):
    """`n` random images and token sequences (BOS-free ids, EOS at a random position, zero padding)."""

    def __init__(self, n: int = 64, seed: int = 0, context: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(n, 3, 32, 32, generator=g)
        ids = torch.randint(1, 1000, (n, context), generator=g)
        ends = torch.randint(3, context, (n,), generator=g)
        for i, e in enumerate(ends.tolist()):
            ids[i, e] = EOS_TOKEN_ID
            ids[i, e + 1:] = 0
        self.input_ids = ids

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[i], "input_ids": self.input_ids[i]}


def tiny_model(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    """The registry's tiny CLIP, optionally with attention dropout (to exercise RNG restoration)."""
    d = get_config_dict("tiny")
    for tower in ("vision_config", "text_config"):
        d[tower]["attention_dropout"] = dropout
    return build(d, seed=seed)


def resume_config(**overrides: Any) -> TrainConfig:
    kw: dict[str, Any] = dict(steps=12, batch_size=8, lr=1e-3, weight_decay=0.1, warmup=2, log_every=1,
                              save_every=3, seed=3)
    kw.update(overrides)
    return TrainConfig(**kw)


class SlowAfter:
    """The default CLIP step, but sleeping from its `slow_from`-th call on."""

    def __init__(self, slow_from: int) -> None:
        self.inner = ClipStep(ClipLoss())
        self.calls = 0
        self.slow_from = slow_from

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]):
        self.calls += 1
        if self.calls >= self.slow_from:
            time.sleep(300)
        return self.inner(model, batch)


def main(argv: list[str]) -> None:
    out_dir, threads, slow_from = argv[0], int(argv[1]), int(argv[2])
    torch.set_num_threads(threads)
    train(tiny_model(dropout=0.1), SyntheticPairs(), resume_config(), out_dir, step_fn=SlowAfter(slow_from),
          progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
