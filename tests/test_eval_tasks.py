"""Model-level evaluation tasks on the tiny CLIP and an in-test colour dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.eval import finetune_classifier, linear_probe, retrieval, write_json, zeroshot_classification
from clipforge.models.registry import build

pytest.importorskip("clipforge.models.tokenizer")
pytest.importorskip("clipforge.models.preprocess")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220)}


class Colours(ImageTextDataset):
    """Solid-colour 32 px images with pixel noise; label = colour; one or two captions each."""

    name = "colours"
    classnames = list(COLOURS)
    templates = ["a photo of a {}.", "a {c} square."]

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            label = i % len(COLOURS)
            base = np.array(COLOURS[self.classnames[label]], dtype=np.float64)
            pix = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            caps = [f"a {self.classnames[label]} square number {i}"] + (["another caption"] if i % 2 else [])
            self.items.append(Sample(Image.fromarray(pix), caps, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        return self.items[i]


def in_unit_interval(m: dict, keys: set) -> bool:
    assert keys <= set(m), m
    return all(0.0 <= m[k] <= 1.0 for k in keys)


@pytest.fixture(scope="module")
def tiny():
    return build("tiny", seed=0)


def test_retrieval_keys(tiny):
    m = retrieval(tiny, Colours(12, 0), ks=(1, 5))
    assert set(m) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5)}
    assert in_unit_interval(m, set(m))
    assert not tiny.training  # eval mode kept


def test_zeroshot_keys_and_mode_restored(tiny):
    tiny.train()
    try:
        m = zeroshot_classification(tiny, Colours(9, 1))
    finally:
        assert tiny.training  # the caller's mode is restored
        tiny.eval()
    assert set(m) == {"acc1", "mean_per_class_recall"}  # 3 classes: no acc5
    assert in_unit_interval(m, set(m))


def test_linear_probe_separates_colours(tiny):
    m = linear_probe(tiny, Colours(60, 2), Colours(30, 3), weight_decays=(1e-2, 1e-4), max_iter=50)
    assert in_unit_interval(m, {"acc1", "mean_per_class_recall"})
    assert m["acc1"] >= 0.9 and m["weight_decay"] in (1e-2, 1e-4)


def test_finetune_deterministic_and_leaves_model_alone(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    rng_before = torch.get_rng_state()
    kw = dict(steps=6, lr=1e-3, batch_size=8, seed=0)
    a = finetune_classifier(tiny, Colours(24, 4), Colours(12, 5), **kw)
    b = finetune_classifier(tiny, Colours(24, 4), Colours(12, 5), **kw)
    assert a == b
    assert in_unit_interval(a, {"acc1", "mean_per_class_recall"})
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert torch.equal(rng_before, torch.get_rng_state())


def test_finetune_vision_only_model():
    vision = build("tiny", seed=0, kind="vision")
    m = finetune_classifier(vision, Colours(12, 6), Colours(6, 7), steps=2, lr=1e-3, batch_size=4)
    assert in_unit_interval(m, {"acc1", "mean_per_class_recall"})


def test_write_json_atomic(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"acc1": torch.tensor(0.5), "ks": (1, 5)})
    assert json.loads(path.read_text()) == {"acc1": 0.5, "ks": [1, 5]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


def fake_scenes(monkeypatch):
    """A stand-in for `clipforge.data.scenes`: red/blue pairs, one pair type."""
    import sys
    import types
    from collections import namedtuple

    Pair = namedtuple("DiagnosticPair", "image_a image_b caption_a caption_b pair_type")

    def diagnostic_pairs(pair_type, n, seed, image_size):
        solid = lambda rgb: Image.new("RGB", (image_size, image_size), rgb)  # noqa: E731
        return [Pair(solid((200, 0, 0)), solid((0, 0, 200)), "a red square", "a blue square", pair_type)] * n

    mod = types.ModuleType("clipforge.data.scenes")
    mod.PAIR_TYPES, mod.diagnostic_pairs = ("colour", "colour_again"), diagnostic_pairs
    monkeypatch.setitem(sys.modules, "clipforge.data.scenes", mod)


def test_mmvp_diagnostic_with_stand_in_scenes(tiny, monkeypatch):
    from clipforge.eval import mmvp_diagnostic

    fake_scenes(monkeypatch)
    m = mmvp_diagnostic(tiny, n=3)
    assert set(m) == {"colour", "colour_again", "mean"}
    # Identical pairs: each type is all right or all wrong.
    assert m["colour"] in (0.0, 1.0) and m["mean"] == m["colour"]
    assert set(mmvp_diagnostic(tiny, pair_types=["colour"], n=2)) == {"colour", "mean"}


def test_mmvp_diagnostic_real_scenes(tiny):
    scenes = pytest.importorskip("clipforge.data.scenes")
    from clipforge.eval import mmvp_diagnostic

    m = mmvp_diagnostic(tiny, n=4)
    assert set(m) == set(scenes.PAIR_TYPES) | {"mean"}
    assert in_unit_interval(m, set(m))
