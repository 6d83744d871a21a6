"""Scenes caption styles: `full` unchanged, `alt` and `dense` deterministic and true to the spec."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from clipforge.data import open_mixture
from clipforge.data.scenes import PAIR_TYPES, ScenesDataset, SceneSpec, diagnostic_pairs
from clipforge.data.scenes.spec import COLOURS, ORIENTED_SHAPES, SHAPES
from clipforge.data.scenes.styles import CAPTION_STYLES, COUNT_WORDS, clear_relation, dense_relations
from clipforge.data.scenes.text import (
    CROSS_ORIENT_WORDS,
    FILL_ADJ,
    FILL_POST,
    ORIENT_WORDS,
    POSITION_WORDS,
    RELATION_WORDS,
    SIZE_WORDS,
)
from clipforge.errors import ClipforgeError

ROOT = Path(__file__).resolve().parents[1]
# sha256 of the default captions below, taken from the code before caption styles existed (git HEAD
# d4ccca5, run from a `git archive` copy): the default must stay byte-identical.
FULL_SHA256 = "f6776314c6f75d0487fbacd5578dc82e089ce0244a5df28977edb6c15a2cf907"

NUMBER_WORDS = set(COUNT_WORDS.values()) | {"single", "pair", "couple", "several", "many", "multiple", "both",
                                            "each", "every", "group", "some"}
PLACE_WORDS = {w for ws in (*POSITION_WORDS.values(), *RELATION_WORDS.values()) for p in ws for w in p.split()
               if w not in ("the", "of", "at", "in", "on")} | {"beside", "next", "between", "near"}
PLURALS = {s + ("es" if s.endswith("ss") else "s") for s in SHAPES}


def _default_hash() -> str:
    h = hashlib.sha256()
    for split, seed in (("train", 0), ("test", 1)):
        ds = ScenesDataset(split, size=400, seed=seed, captions_per_image=2)
        for i in range(len(ds)):
            for c in ds.captions_at(i):
                h.update(c.encode() + b"\n")
    for t in PAIR_TYPES:
        for p in diagnostic_pairs(t, n=8, seed=0, image_size=16):
            h.update(p.caption_a.encode() + b"\t" + p.caption_b.encode() + b"\n")
    return h.hexdigest()


def test_default_captions_unchanged() -> None:
    assert _default_hash() == FULL_SHA256
    a, b = ScenesDataset("train", size=30, seed=2), ScenesDataset("train", size=30, seed=2, caption_style="full")
    assert [a.captions_at(i) for i in range(30)] == [b.captions_at(i) for i in range(30)]


@pytest.mark.parametrize("style", ["alt", "dense"])
def test_styles_deterministic(style: str) -> None:
    a = ScenesDataset("train", size=60, seed=3, image_size=16, captions_per_image=2, caption_style=style)
    b = ScenesDataset("train", size=60, seed=3, image_size=16, captions_per_image=2, caption_style=style)
    first = {i: a.captions_at(i) for i in range(60)}
    for i in reversed(range(60)):  # any reading order gives the same bytes
        assert "\n".join(b.captions_at(i)).encode() == "\n".join(first[i]).encode()
    assert b[5].captions == first[5] and b[5].image.tobytes() == a[5].image.tobytes()
    other = ScenesDataset("train", size=60, seed=4, caption_style=style)
    assert sum(other.captions_at(i) != first[i] for i in range(60)) > 40
    full = ScenesDataset("train", size=60, seed=3, image_size=16)
    assert full[5].image.tobytes() == a[5].image.tobytes()  # the style changes captions only
    assert all(first[i][0] != full.captions_at(i)[0] for i in range(60))


def _true_attrs(obj) -> set[str]:
    """The attribute words (size, fill, orientation) that are true of `obj`."""
    orient = CROSS_ORIENT_WORDS if obj.shape == "cross" else ORIENT_WORDS
    true = set(SIZE_WORDS[obj.size]) | set(FILL_ADJ[obj.fill]) | set(FILL_POST[obj.fill])
    if obj.shape in ORIENTED_SHAPES:
        true |= set(orient[obj.orientation])
    return true


ALL_ATTRS = ({w for ws in SIZE_WORDS.values() for w in ws} | {w for ws in FILL_ADJ.values() for w in ws}
             | {w for ws in FILL_POST.values() for w in ws} | {w for d in (ORIENT_WORDS, CROSS_ORIENT_WORDS)
                                                                for ws in d.values() for w in ws})


def test_alt_one_object_no_counts_no_relations() -> None:
    n_shape_only = n_extra = n = 0
    frames = set()
    for split, seed in (("train", 0), ("test", 1)):
        ds = ScenesDataset(split, size=1000, seed=seed, captions_per_image=2, caption_style="alt")
        for i in range(len(ds)):
            spec = ds.spec_at(i)
            for text in ds.captions_at(i, spec):
                n += 1
                words = text.split()
                assert not NUMBER_WORDS & set(words), text  # no counts
                assert not PLACE_WORDS & set(words), text  # no positions or relations
                assert "and" not in words and "," not in text, text  # one object only
                assert not PLURALS & set(words), text  # not even a plural
                shapes = [w for w in words if w in SHAPES]
                colours = [w for w in words if w in COLOURS]
                assert len(shapes) == 1 and len(colours) <= 1, text
                # The named group exists in the scene, with that colour and every attribute said.
                said = [a for a in ALL_ATTRS if re.search(rf"\b{a}\b", text)]
                # one attribute, not two: "solid" inside "in solid colour"
                said = [a for a in said if not any(a != b and a in b for b in said)]
                assert len(said) <= 1, text  # at most one more attribute
                assert any(o.shape == shapes[0] and (not colours or o.colour == colours[0])
                           and set(said) <= _true_attrs(o) for o in spec.objects), (text, spec)
                n_shape_only += not colours
                n_extra += bool(said)
                frames.add(" ".join("X" if w in SHAPES or w in COLOURS or w in ALL_ATTRS else w for w in words))
    assert 0.27 < n_shape_only / n < 0.40  # shape alone about a third of the time
    assert 0.15 < n_extra / n < 0.40  # sometimes one more attribute
    assert len(frames) >= 15  # varied phrasings


def _noun(obj) -> str:
    return obj.shape if obj.count == 1 else obj.shape + ("es" if obj.shape.endswith("ss") else "s")


def test_dense_names_everything() -> None:
    alt_words = dense_words = 0
    for split, seed in (("train", 0), ("test", 1)):
        ds = ScenesDataset(split, size=600, seed=seed, caption_style="dense")
        alt = ScenesDataset(split, size=600, seed=seed, caption_style="alt")
        for i in range(len(ds)):
            spec = ds.spec_at(i)
            (text,) = ds.captions_at(i, spec)
            total = sum(o.count for o in spec.objects)
            assert re.search(rf"\b{COUNT_WORDS[total]}\b", text) or total == 1, text
            for o in spec.objects:
                # every group: count, size, colour and shape, with its colour bound to its shape
                assert re.search(rf"\b{COUNT_WORDS[o.count]} {SIZE_WORDS[o.size][0]}|"
                                 rf"\b{COUNT_WORDS[o.count]} {SIZE_WORDS[o.size][1]}", text), (text, o)
                assert f"{o.colour} {_noun(o)}" in text, (text, o)
                assert re.search(rf"\b(is|are) {o.colour}\b", text), text
                fills = FILL_ADJ[o.fill] + FILL_POST[o.fill]
                assert any(f in text for f in fills), (text, o)
                if o.shape in ORIENTED_SHAPES:
                    words = (CROSS_ORIENT_WORDS if o.shape == "cross" else ORIENT_WORDS)[o.orientation]
                    assert any(w in text for w in words), (text, o)
            if spec.relation is not None:
                i_, j, rel = spec.relation
                a, b = spec.objects[i_], spec.objects[j]
                assert (any(f"{a.colour} {_noun(a)} is {r} the {b.colour} {_noun(b)}" in text
                            for r in RELATION_WORDS[rel])
                        or any(f"{b.colour} {_noun(b)} is {r} the {a.colour} {_noun(a)}" in text
                               for r in RELATION_WORDS[{"left": "right", "right": "left", "above": "below",
                                                        "below": "above"}[rel]])), text
            if spec.position is not None and len(spec.objects) == 1:
                assert any(p in text for p in POSITION_WORDS[spec.position]), text
            dense_words += len(text.split())
            alt_words += len(alt.captions_at(i, spec)[0].split())
    assert dense_words > 4 * alt_words  # several times longer on average


def test_dense_relations_are_true() -> None:
    ds = ScenesDataset("train", size=800, seed=5)
    axis = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}
    stated = 0
    for i in range(len(ds)):
        spec = ds.spec_at(i)
        rels = dense_relations(spec)
        if spec.relation is not None:
            assert rels == [spec.relation]
            continue
        for k, j, rel in rels:
            stated += 1
            ax, sign = axis[rel]
            for pa in spec.objects[k].centres:
                for pb in spec.objects[j].centres:
                    assert sign * (pa[ax] - pb[ax]) > max(0.08, abs(pa[1 - ax] - pb[1 - ax]))
    assert stated > 50  # packed scenes get relations too
    left = SceneSpec.from_dict({"kind": "binding", "objects": [
        {"shape": "star", "colour": "red", "size": "small", "fill": "solid", "orientation": "upright",
         "centres": [[0.2, 0.5]]},
        {"shape": "heart", "colour": "blue", "size": "small", "fill": "solid", "orientation": "upright",
         "centres": [[0.7, 0.45]]}]})
    assert clear_relation(*left.objects) == "left" and clear_relation(*left.objects[::-1]) == "right"


def test_style_option_and_errors() -> None:
    with pytest.raises(ClipforgeError, match="caption_style"):
        ScenesDataset("train", caption_style="long")
    ds = open_mixture(["scenes"], "train", 16, scenes_size=5, scenes_seed=2, scenes_captions="dense")
    assert ds.caption_style == "dense" and ds[0].captions == ScenesDataset(
        "train", 5, 2, 16, caption_style="dense").captions_at(0)
    assert open_mixture(["scenes"], "train", 16, scenes_size=5).caption_style == "full"
    from clipforge.cli.train import SCENES_CAPTIONS

    assert tuple(SCENES_CAPTIONS) == CAPTION_STYLES


def test_cli_flag(tmp_path, capsys) -> None:
    from clipforge.cli import main

    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown style, naming the flag
        main(["eval", "--model", "nowhere", "--task", "retrieval", "--scenes-captions", "long"])
    assert exc.value.code == 2 and "--scenes-captions" in capsys.readouterr().err
    import argparse

    from clipforge.cli import moe as moe_cli

    p = argparse.ArgumentParser()
    moe_cli._data_args(p)
    args = p.parse_args(["--data", "scenes", "--scenes-size", "4", "--scenes-captions", "alt"])
    data = moe_cli._open(args, 16)
    assert "alt" in data.name
    assert data[0].captions == ScenesDataset("train", 4, 1, 16, caption_style="alt").captions_at(0)


def test_ancestry_recipe_field() -> None:
    from dataclasses import asdict

    from clipforge.demo.ancestry import AncestryRecipe, _same_recipe, training_data

    r = AncestryRecipe.quick()
    assert AncestryRecipe().caption_style == "alt" and r.caption_style == "alt"
    r.caption_style, r.fashion = "dense", False
    assert training_data(r).caption_style == "dense"
    # A recipe recorded before caption styles (and flat, before the schedule was one config) trained on "full".
    full = AncestryRecipe(caption_style="full")
    flat = {k: v for k, v in asdict(full).items() if k not in ("caption_style", "schedule")}
    flat |= {k: asdict(full.schedule)[k] for k in ("steps", "batch_size", "lr", "weight_decay", "warmup", "seed")}
    assert _same_recipe(flat, full)  # caches from before the fields stay valid
    assert not _same_recipe(flat, AncestryRecipe())
    assert _same_recipe(asdict(AncestryRecipe()), AncestryRecipe())
    assert not _same_recipe({**asdict(AncestryRecipe()), "unknown": 1}, AncestryRecipe())


def test_caption_stats_script(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("caption_stats", ROOT / "scripts" / "caption_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "stats.md"
    assert mod.main(["--n", "40", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"full", "alt", "dense"} <= set(rows)
    stats = {s: mod.style_stats(s, 40) for s in ("alt", "dense")}
    assert stats["dense"]["tokens"]["mean"] > 3 * stats["alt"]["tokens"]["mean"]
    assert stats["alt"]["over_32"] == 0
    assert mod.main(["--n", "0"]) == 2
