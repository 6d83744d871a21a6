"""The benchmark's data: fixed, seeded pools, rendered once and held in memory.

Rendering a procedural scene costs about as much as a training step of a small model on it, and the
benchmark reads the same scenes in dozens of runs, so scene pools are drawn once up front. Every pool
is a deterministic function of (split, seed, size), so a resumed benchmark sees the same data.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from clipforge.data import ConcatImageText
from clipforge.data.cached import Cached
from clipforge.data.classification import MNIST, FashionMNIST
from clipforge.data.scenes import ScenesDataset, count_captions

from .budget import Budget


def scenes(split: str, size: int, seed: int, image_size: int, caption_style: str = "full") -> Cached:
    return Cached(ScenesDataset(split=split, size=size, seed=seed, image_size=image_size, caption_style=caption_style),
                  f"scenes[{split},seed{seed},n{size},{image_size}px,{caption_style}]")


def pretraining(budget: Budget, image_size: int, caption_style: str = "alt") -> Dataset:
    """Scenes (train, seed 0: the ancestry's stream, in its caption style) plus the first Fashion-MNIST train images."""
    parts = [scenes("train", budget.pt_scenes, 0, image_size, caption_style)]
    if budget.pt_fashion:
        parts.append(FashionMNIST(split="train", limit=budget.pt_fashion))
    data = ConcatImageText(parts)
    # The name is what extraction records and compares on a rerun: make it say exactly what was used.
    data.name = "+".join([parts[0].name] + ([f"fashion-mnist[train,n{budget.pt_fashion}]"]
                                            if budget.pt_fashion else []))
    return data


def classification(name: str, budget: Budget) -> tuple[Dataset, Dataset]:
    """(train, test) of Fashion-MNIST or MNIST at the budget's sizes."""
    cls = FashionMNIST if name == "fashion-mnist" else MNIST
    return cls(split="train", limit=budget.ft_vision_train), cls(split="test", limit=budget.eval_classify)


def scene_captions(split: str, size: int, seed: int) -> tuple[list[str], list[int]]:
    """(first caption, object count − 1) of `size` scenes, drawn without rendering any image."""
    return count_captions(split, size, seed)
