"""The benchmark's data: fixed, seeded pools, rendered once and held in memory.

Rendering a procedural scene costs about as much as a training step of a small model on it, and the
benchmark reads the same scenes in hundreds of runs, so scene pools are drawn once up front. Every pool
is a deterministic function of (split, seed, size), so a resumed benchmark sees the same data.

The pre-training pool is the start of the ancestry's own training set (its scenes stream, in its caption
style mix, then Fashion-MNIST train): every method pre-trains on data the ancestry trained on, and the
extraction sees a stated share of the samples the ancestry saw.

The text task counts objects from a caption ("three red stars and a heart" → 4) and keeps only captions
whose every token the ancestry trained (its token-table row moved from its seeded initialisation), so it
measures reading, not an untrained vocabulary; the share of drawn captions that held an untrained token
is recorded (`text_task`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from clipforge.data import ConcatImageText
from clipforge.data.cached import Cached
from clipforge.data.classification import MNIST, FashionMNIST
from clipforge.data.scenes import ScenesDataset

from .budget import Budget

MAX_COUNT = 5  # counts 1..5 (5 means five or more): five classes


def scenes(split: str, size: int, seed: int, image_size: int, caption_style: str = "full") -> Cached:
    return Cached(ScenesDataset(split=split, size=size, seed=seed, image_size=image_size, caption_style=caption_style),
                  f"scenes[{split},seed{seed},n{size},{image_size}px,{caption_style}]")


def pretraining(budget: Budget, image_size: int, recipe: dict[str, Any]) -> Dataset:
    """The first `pool_scenes` scenes of the ancestry's own stream (its seed, style mix) + the first
    `pool_fashion` Fashion-MNIST train images (prompt captions)."""
    style = recipe.get("caption_style", "alt")
    full, dense = float(recipe.get("full_share", 0.0)), float(recipe.get("dense_share", 0.0))
    seed = int((recipe.get("schedule") or {}).get("seed", 0))
    name = f"scenes[train,seed{seed},n{budget.pool_scenes},{image_size}px,{style},full{full},dense{dense}]"
    parts: list[Any] = [Cached(ScenesDataset(split="train", size=budget.pool_scenes, seed=seed, image_size=image_size,
                                             caption_style=style, full_share=full, dense_share=dense), name)]
    if budget.pool_fashion:
        parts.append(FashionMNIST(split="train", limit=budget.pool_fashion))
    data = ConcatImageText(parts)
    # The name is what extraction records and compares on a rerun: make it say exactly what was used.
    data.name = "+".join([name] + ([f"fashion-mnist[train,n{budget.pool_fashion}]"] if budget.pool_fashion else []))
    return data


def classification(name: str, budget: Budget) -> tuple[Dataset, Dataset]:
    """(train, test) of Fashion-MNIST or MNIST at the budget's sizes."""
    cls = FashionMNIST if name == "fashion-mnist" else MNIST
    return cls(split="train", limit=budget.ft_vision_train), cls(split="test", limit=budget.eval_classify)


def trained_tokens(ancestry: torch.nn.Module, recipe: dict[str, Any]) -> torch.Tensor | None:
    """Boolean mask over the ancestry's token table: rows that moved from its seeded initialisation (the
    tokens its training reached: embeddings take no weight decay). None when the recipe does not say
    which initialisation it started from."""
    from clipforge.models.registry import build

    arch, seed = recipe.get("arch"), (recipe.get("schedule") or {}).get("seed")
    if not arch or seed is None:
        return None
    init = build(arch, seed=int(seed))
    now = ancestry.text_model.embeddings.token_embedding.weight
    then = init.text_model.embeddings.token_embedding.weight
    if now.shape != then.shape:
        return None
    with torch.no_grad():
        return (now - then).abs().amax(1) > 0


def text_task(split: str, size: int, seed: int, trained: torch.Tensor | None, context: int,
              keep_untrained: bool = False) -> dict[str, Any]:
    """`size` (caption, object count − 1) pairs in full captions, drawn in order and kept only when every
    token (bos/eos included, within `context`) is one the ancestry trained (`keep_untrained`: kept anyway,
    only counted); with the number that held an untrained token."""
    from clipforge.models.tokenizer import tokenize

    ds = ScenesDataset(split=split, size=50 * size, seed=seed, caption_style="full")
    texts, labels, drawn, untrained, truncated = [], [], 0, 0, 0
    batch = 256
    for start in range(0, len(ds), batch):
        idx = range(start, min(start + batch, len(ds)))
        caps = [ds.captions_at(i)[0] for i in idx]
        ids = tokenize(caps, context_length=context)
        for i, cap, row in zip(idx, caps, ids, strict=True):
            drawn += 1
            used = row[row != 0]
            truncated += int(bool(row[-1] != 0))
            if trained is not None and not bool(trained[used].all()):
                untrained += 1
                if not keep_untrained:
                    continue
            texts.append(cap)
            labels.append(min(sum(o.count for o in ds.spec_at(i).objects), MAX_COUNT) - 1)
            if len(texts) == size:
                return {"texts": texts, "labels": labels, "drawn": drawn, "untrained": untrained,
                        "truncated": truncated, "checked": trained is not None, "filtered": not keep_untrained}
    from clipforge.errors import ClipforgeError

    raise ClipforgeError(f"only {len(texts)} of {drawn} {split} captions use tokens the ancestry trained; "
                         f"the text task needs {size}")
