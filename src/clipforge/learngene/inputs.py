"""What MM-LG's commands read: the ancestry, the data, and the schedule fields a run's settings record."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..schedule import Schedule


def brief(s: Schedule) -> dict[str, Any]:
    """The schedule fields a learngene's settings record (the result-deciding ones)."""
    return {"steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "weight_decay": s.weight_decay,
            "warmup": s.warmup, "seed": s.seed}


def load_ancestry(path: str | os.PathLike) -> tuple[nn.Module, Path]:
    """The ancestry CLIP from a model directory, or from a run directory holding `model/` (`clipforge ancestry`)."""
    from ..models.io import load, resolve_model_dir

    model_dir = resolve_model_dir(Path(path).expanduser())  # provenance records `~/...` paths
    return load(model_dir).eval(), model_dir.resolve()


def open_data(data: Sequence[str] | Dataset, image_size: int, scenes_size: int = 50_000,
              **user_kw: Any) -> tuple[Dataset, Any]:
    """(dataset, identity): built-in names or paths (scenes drawn at `image_size`; `user_kw`: column names and
    `on_error` for users' files), or a dataset as is; the identity names files by path, size and time."""
    from ..data import open_mixture, require_captions
    from ..data.base import identity

    if not isinstance(data, (list, tuple)):
        return data, identity(data)
    ds = require_captions(open_mixture(data, "train", image_size, scenes_size, **user_kw))
    return ds, identity(ds)
