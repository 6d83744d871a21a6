"""Procedural scenes: determinism, caption variety and length, held-out split, diagnostic pairs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from clipforge.data.base import Sample
from clipforge.data.scenes import HELD_OUT, PAIR_TYPES, ScenesDataset, SceneSpec, diagnostic_pairs
from clipforge.errors import ClipforgeError

N_PAIRS = 100


@pytest.fixture(scope="module")
def pairs() -> dict[str, list]:
    return {t: diagnostic_pairs(t, n=N_PAIRS, seed=0, image_size=24) for t in PAIR_TYPES}


def _words(text: str) -> list[str]:
    """The caption's words as a multiset, "an" counted as "a" (articles follow the next word)."""
    return sorted("a" if w == "an" else w for w in text.split())


def _combos(spec: SceneSpec) -> set[tuple[str, str]]:
    return {o.combo for o in spec.objects}


def test_same_seed_same_items_in_any_order() -> None:
    a = ScenesDataset("train", size=50, seed=3, image_size=32, captions_per_image=2)
    b = ScenesDataset("train", size=50, seed=3, image_size=32, captions_per_image=2)
    idx = [0, 7, 19, 42, 49]
    first = {i: a[i] for i in idx}
    for i in reversed(idx):
        s = b[i]
        assert isinstance(s, Sample)
        assert s.image.tobytes() == first[i].image.tobytes()
        assert s.captions == first[i].captions and len(s.captions) == 2
        assert s.meta["spec"] == first[i].meta["spec"]
        assert s.image.size == (32, 32) and s.image.mode == "RGB"
    other = ScenesDataset("train", size=50, seed=4, image_size=32)
    assert sum(other[i].image.tobytes() != first[i].image.tobytes() for i in idx) == len(idx)
    with pytest.raises(IndexError):
        a[50]


def test_spec_dict_round_trip() -> None:
    ds = ScenesDataset("test", size=20)
    for i in range(20):
        spec = ds.spec_at(i)
        assert SceneSpec.from_dict(spec.to_dict()) == spec


def test_many_distinct_captions() -> None:
    # captions barely repeat: 9,980 distinct in 10,000 scenes when this was written; 8,000 keep the test short
    ds = ScenesDataset("train", size=8_000, seed=0)
    captions = {ds.captions_at(i)[0] for i in range(len(ds))}
    assert len(captions) >= 0.95 * len(ds)


def test_held_out_combos_split() -> None:
    train = ScenesDataset("train", size=5000, seed=1)
    kinds: Counter[str] = Counter()
    for i in range(len(train)):
        spec = train.spec_at(i)
        kinds[spec.kind] += 1
        assert not _combos(spec) & HELD_OUT, spec
    assert set(kinds) == {"single", "relation", "binding", "count"}
    test = ScenesDataset("test", size=2000, seed=1)
    for i in range(len(test)):
        assert _combos(test.spec_at(i)) & HELD_OUT
    assert 8 <= len(HELD_OUT) <= 14


def test_caption_length() -> None:
    captions = [c for split in ("train", "test") for i in range(1500)
                for c in ScenesDataset(split, size=1500, seed=2, captions_per_image=2).captions_at(i)]
    captions += [t for ps in (diagnostic_pairs(p, n=30, image_size=16) for p in PAIR_TYPES)
                 for q in ps for t in (q.caption_a, q.caption_b)]
    assert max(len(c.split()) for c in captions) <= 22
    try:
        from clipforge.models.tokenizer import tokenize
    except ImportError:  # the tokenizer lands separately
        return
    ids = tokenize(captions, context_length=77)
    assert int((ids != 0).sum(1).max()) <= 32


def test_pairs_differ_in_one_thing(pairs: dict[str, list]) -> None:
    for t, ps in pairs.items():
        assert len(ps) >= N_PAIRS
        for p in ps:
            assert p.pair_type == t
            assert p.caption_a != p.caption_b, (t, p.caption_a)
            assert p.image_a.tobytes() != p.image_b.tobytes(), (t, p.caption_a)
            a, b = SceneSpec.from_dict(p.spec_a), SceneSpec.from_dict(p.spec_b)
            assert _combos(a) & HELD_OUT  # pairs come from the test distribution
            if t in ("colour", "shape", "size", "fill", "orientation"):
                (oa,), (ob,) = a.objects, b.objects
                changed = [f for f in ("colour", "shape", "size", "fill", "orientation")
                           if getattr(oa, f) != getattr(ob, f)]
                assert changed == [t] and oa.centres == ob.centres
            if t == "position":
                assert a.position != b.position


def test_binding_relation_count_pairs(pairs: dict[str, list]) -> None:
    for p in pairs["binding"]:
        a, b = SceneSpec.from_dict(p.spec_a), SceneSpec.from_dict(p.spec_b)
        assert sorted(o.shape for o in a.objects) == sorted(o.shape for o in b.objects)
        assert sorted(o.colour for o in a.objects) == sorted(o.colour for o in b.objects)
        assert _combos(a) != _combos(b)
        assert _words(p.caption_a) == _words(p.caption_b)  # only word order differs
    for p in pairs["relation"]:
        a, b = SceneSpec.from_dict(p.spec_a), SceneSpec.from_dict(p.spec_b)
        strip = [(o.shape, o.colour, o.size, o.fill, o.orientation) for o in a.objects]
        assert strip == [(o.shape, o.colour, o.size, o.fill, o.orientation) for o in b.objects]
        assert a.relation and b.relation and a.relation[2] == b.relation[2]
        assert a.relation[:2] != b.relation[:2]
        assert _words(p.caption_a) == _words(p.caption_b)
    for p in pairs["count"]:
        a, b = SceneSpec.from_dict(p.spec_a), SceneSpec.from_dict(p.spec_b)
        assert abs(a.objects[0].count - b.objects[0].count) == 1
        assert a.objects[1:] == b.objects[1:]


def test_relation_geometry() -> None:
    ds = ScenesDataset("train", size=400, seed=5)
    axis = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}
    for i in range(len(ds)):
        spec = ds.spec_at(i)
        if spec.relation is None:
            continue
        k, j, rel = spec.relation
        (pa,), (pb,) = spec.objects[k].centres, spec.objects[j].centres
        ax, sign = axis[rel]
        # a is clearly on the named side of b, more along the relation's axis than across it.
        assert sign * (pa[ax] - pb[ax]) > abs(pa[1 - ax] - pb[1 - ax])


def test_bad_arguments() -> None:
    with pytest.raises(ClipforgeError):
        ScenesDataset("val")
    with pytest.raises(ClipforgeError):
        diagnostic_pairs("texture")
    assert np.asarray(ScenesDataset("test", size=1, image_size=40)[0].image).shape == (40, 40, 3)
