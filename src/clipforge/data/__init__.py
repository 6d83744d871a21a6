"""Image-text data: built-in datasets (scenes, fashion-mnist, mnist), users' formats, mixing.

Every dataset yields `clipforge.data.base.Sample`s; `clipforge.data.collate` turns them into tensors.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from typing import Any

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.errors import ClipforgeError

BUILTINS = ("scenes", "fashion-mnist", "mnist")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or "." in name or "*" in name or "{" in name or os.path.exists(name)


def get_dataset(name: str, split: str = "train", **kw: Any) -> ImageTextDataset:
    """A built-in dataset by name ("scenes", "fashion-mnist", "mnist") or a user's data by path.

    Keyword arguments go to the dataset's constructor (`ScenesDataset`, `FashionMNIST`, `MNIST`)
    or to `clipforge.data.user.open_dataset`, which receives `split` too.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    # Imported here so `import clipforge.data` stays cheap and optional extras stay optional.
    if key == "scenes":
        from clipforge.data.scenes import ScenesDataset

        return ScenesDataset(split=split, **kw)
    if key == "fashion-mnist":
        from clipforge.data.classification import FashionMNIST

        return FashionMNIST(split=split, **kw)
    if key == "mnist":
        from clipforge.data.classification import MNIST

        return MNIST(split=split, **kw)
    if _looks_like_path(name):
        from clipforge.data.user import open_dataset

        return open_dataset(name, split=split, **kw)
    raise ClipforgeError(f"unknown dataset {name!r} (built-ins: {', '.join(BUILTINS)}; or give a path)")


class ConcatImageText(ImageTextDataset):
    """Several datasets end to end, still yielding `Sample`s.

    Class labels stay distinct: each labelled dataset's labels are shifted past the previous
    ones, and `classnames` is the concatenation. `templates` is kept only if all datasets share it.
    `meta["dataset"]` names the dataset a sample came from.
    """

    def __init__(self, datasets: Sequence[ImageTextDataset]) -> None:
        if not datasets:
            raise ClipforgeError("ConcatImageText needs at least one dataset")
        self.datasets = list(datasets)
        self.name = "+".join(d.name for d in self.datasets)
        self._starts: list[int] = []
        self._offsets: list[int] = []
        classnames: list[str] = []
        total = 0
        for d in self.datasets:
            self._starts.append(total)
            self._offsets.append(len(classnames))
            classnames += list(d.classnames or [])
            total += len(d)
        self._len = total
        self.classnames = classnames or None
        self.has_captions = all(getattr(d, "has_captions", True) for d in self.datasets)
        templates = {tuple(d.templates) for d in self.datasets if d.templates}
        self.templates = list(templates.pop()) if len(templates) == 1 else None

    def __len__(self) -> int:
        return self._len

    def identity(self) -> list[Any]:
        return [d.identity() for d in self.datasets]

    def __getitem__(self, i: int) -> Sample:
        if not -self._len <= i < self._len:
            raise IndexError(i)
        i %= self._len
        # Rightmost start <= i: skips empty datasets, whose start equals the next one's.
        k = bisect.bisect_right(self._starts, i) - 1
        s = self.datasets[k][i - self._starts[k]]
        label = None if s.label is None else s.label + self._offsets[k]
        return Sample(s.image, s.captions, label, {**s.meta, "dataset": self.datasets[k].name})


__all__ = ["BUILTINS", "ConcatImageText", "ImageTextDataset", "Sample", "get_dataset"]


def require_captions(dataset: ImageTextDataset, flag: str = "--data") -> ImageTextDataset:
    """`dataset` if its samples have captions, else one line naming why (training is contrastive: it needs them)."""
    if not getattr(dataset, "has_captions", True):
        parts = getattr(dataset, "datasets", [dataset])
        why = "; ".join(getattr(d, "no_captions", "") for d in parts if not getattr(d, "has_captions", True))
        raise ClipforgeError(f"{flag}: {why or 'no captions'}; training pairs images with captions (choose the "
                             "caption column with --caption-key)")
    return dataset


def open_mixture(specs: Sequence[str], split: str, image_size: int | None = None, scenes_size: int = 50_000,
                 scenes_seed: int = 0, scenes_captions: str = "full", label_key: str | None = None,
                 **user_kw: Any) -> ImageTextDataset:
    """Datasets named by `specs` (built-in names or paths), mixed end to end.

    `scenes` is drawn at `image_size` (a model's input size) with `scenes_size` samples from generator
    seed `scenes_seed` (0 is the ancestry's own training scenes; another seed gives new ones), captioned
    in style `scenes_captions` ("full", "alt" or "dense": `clipforge.data.scenes.styles`); other
    built-ins take no options; `label_key` and `user_kw` (column names, `on_error`, ...) go to users'
    data only (built-in classification sets carry their own labels).
    """
    if not specs:
        raise ClipforgeError("no dataset given")
    if label_key is not None:
        user_kw = {**user_kw, "label_key": label_key}
    parts = []
    for spec in specs:
        key = _ALIASES.get(spec.lower(), spec.lower())
        if key == "scenes":
            parts.append(get_dataset(key, split=split, image_size=image_size or 40, size=scenes_size,
                                     seed=scenes_seed, caption_style=scenes_captions))
        elif key in BUILTINS:
            parts.append(get_dataset(key, split=split))
        else:
            parts.append(get_dataset(spec, split=split, **user_kw))
    return parts[0] if len(parts) == 1 else ConcatImageText(parts)
