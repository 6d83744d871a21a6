"""The one interface every image-text dataset in clipforge implements.

A dataset is a `torch.utils.data.Dataset` whose items are `Sample`s: a PIL image, one or more
captions, and optionally a class label. Turning samples into tensors (preprocessing, tokenising,
choosing one caption per step) is the collator's job (`clipforge.data.collate`), so datasets stay
free of model details and any model can read any dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..errors import ClipforgeError


@dataclass
class Sample:
    image: Image.Image
    captions: list[str]
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ImageTextDataset(Dataset):
    """Base class: subclasses set `name` and implement `__len__` and `__getitem__ -> Sample`.

    `classnames` is set for classification datasets (zero-shot / fine-tuning), else None.
    `templates` are the prompt templates used to caption a class ("a photo of a {}.").
    `has_captions` is False for labelled data without captions (users' data opened with a label_key).
    """

    name: str = "dataset"
    classnames: list[str] | None = None
    templates: list[str] | None = None
    has_captions: bool = True

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def identity(self) -> Any:
        """What identifies these data in a run's settings (a rerun on other data must not resume): the name,
        and for data read from files their path, size and modification time (`data.user.UserDataset`)."""
        return self.name


def identity(dataset: Any) -> Any:
    """`dataset.identity()` for clipforge datasets, the name or type of anything else."""
    if isinstance(dataset, ImageTextDataset):
        return dataset.identity()
    return getattr(dataset, "name", type(dataset).__name__)


def as_image(item: Any) -> Image.Image:
    """The PIL image of a dataset item: a `Sample`, a bare image, or an `(image, ...)` tuple."""
    if isinstance(item, Image.Image):
        return item
    if hasattr(item, "image"):
        return item.image
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Image.Image):
        return item[0]
    raise ClipforgeError(f"cannot find an image in a dataset item of type {type(item).__name__}")
