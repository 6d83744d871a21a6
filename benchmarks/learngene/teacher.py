"""The ancestry's embeddings of the pre-training pool, computed once and read by every run that distils.

Every ancestry-initialised run distils from the ancestry, feature KD matches its embeddings, and every
one-tower member contrasts with its other tower; all of them read the same pool. `cached_teacher` fills a
`clipforge.learngene.distill.TeacherCache` with the ancestry's projected image and text embeddings of
every pool sample (one forward per sample, in fp32), saves it under the work directory (a resumed run or
a second shard loads it), and the runs read it while it is active (`teacher_cache`). FLOPs are still
charged per sample read (costs.py): the cache saves wall time, not accounting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from clipforge.cost import Timer
from clipforge.data.collate import Collator
from clipforge.learngene.distill import TeacherCache, _row_keys
from clipforge.models.preprocess import transform_for

CHUNK = 256


@torch.no_grad()
def fill(cache: TeacherCache, data: Dataset, context: int) -> None:
    """Run the teacher once over every sample of `data` (first caption), in chunks."""
    collate = Collator(transform_for(cache.teacher.config), context, caption="first")
    for start in range(0, len(data), CHUNK):
        batch = collate([data[i] for i in range(start, min(start + CHUNK, len(data)))])
        cache.outputs(batch, torch.device("cpu"))
    cache.hits = cache.misses = 0  # count what the runs read, not the fill


def save(cache: TeacherCache, path: Path) -> None:
    """Write the cache atomically (a temporary file of this process, then a rename): two shards filling it at
    once each write their own, and a reader never sees half a file."""
    keys = list(cache.store)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": cache.fingerprint, "keys": keys,
                "image": torch.stack([cache.store[k][0] for k in keys]),
                "text": torch.stack([cache.store[k][1] for k in keys])}, tmp)
    tmp.replace(path)


def load(cache: TeacherCache, path: Path) -> bool:
    """Fill `cache` from `path` if it holds this teacher's embeddings; whether it did."""
    if not path.is_file():
        return False
    rec = torch.load(path, weights_only=False)
    if rec.get("fingerprint") != cache.fingerprint:
        return False
    cache.store = {k: (i, t) for k, i, t in zip(rec["keys"], rec["image"], rec["text"], strict=True)}
    return True


def cached_teacher(ancestry: nn.Module, data: Dataset, context: int, work: Path) -> tuple[TeacherCache, dict[str, Any]]:
    """The pool's teacher cache (loaded from the work directory, else computed and saved) and its record."""
    cache, path = TeacherCache(ancestry), work / "teacher-cache.pt"
    with Timer() as t:
        loaded = load(cache, path)
        if not loaded:
            fill(cache, data, context)
            save(cache, path)
    return cache, {"rows": len(cache.store), "samples": len(data), "loaded": loaded, "seconds": round(t.seconds, 1)}


def keys_of(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """The cache's keys of a collated batch (for tests)."""
    return _row_keys(batch)
