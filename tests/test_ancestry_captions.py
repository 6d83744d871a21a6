"""The ancestry's training captions (alt-text with a seeded share of `full` captions), its recipe's
validation and old records, and the embedding-coverage check of its metrics."""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest
import torch

from clipforge.cli import main
from clipforge.data.scenes import ScenesDataset
from clipforge.demo.ancestry import (
    AncestryRecipe,
    _same_recipe,
    coverage,
    coverage_line,
    embedding_coverage,
    summary,
    train_ancestry,
    training_data,
)
from clipforge.errors import ClipforgeError
from clipforge.models.registry import build
from clipforge.models.tokenizer import get_tokenizer

N = 3000


def _mixed(**kw) -> ScenesDataset:
    return ScenesDataset("train", size=N, seed=4, image_size=16, caption_style="alt", **{"full_share": 0.15, **kw})


def test_mixed_captions_take_the_share_asked() -> None:
    styles = [_mixed().style_at(i) for i in range(N)]
    assert set(styles) == {"alt", "full"}
    share = styles.count("full") / N
    assert abs(share - 0.15) < 4 * math.sqrt(0.15 * 0.85 / N)  # binomial: 4 standard deviations
    # Each item's caption is the one its style's own dataset gives it: only the style is drawn anew.
    alt, full = (ScenesDataset("train", size=N, seed=4, image_size=16, caption_style=s) for s in ("alt", "full"))
    mixed = _mixed()
    for i in range(200):
        assert mixed.captions_at(i) == (full if styles[i] == "full" else alt).captions_at(i)
    # a share of 0 is the plain style, of 1 all full
    assert [_mixed(full_share=0).captions_at(i) for i in range(50)] == [alt.captions_at(i) for i in range(50)]
    assert {_mixed(full_share=1).style_at(i) for i in range(50)} == {"full"}


def test_a_dense_share_takes_its_own_items_and_leaves_the_full_ones() -> None:
    full_only, both = _mixed(), _mixed(dense_share=0.05)
    styles = [both.style_at(i) for i in range(N)]
    assert set(styles) == {"alt", "full", "dense"}
    assert abs(styles.count("dense") / N - 0.05) < 4 * math.sqrt(0.05 * 0.95 / N)
    # one draw per item: the items "full" under full_share alone stay full; dense ones come from the alt ones
    assert [s == "full" for s in styles] == [full_only.style_at(i) == "full" for i in range(N)]
    dense = ScenesDataset("train", size=N, seed=4, image_size=16, caption_style="dense")
    i = styles.index("dense")
    assert both.captions_at(i) == dense.captions_at(i)
    for bad in (dict(dense_share=-0.1), dict(dense_share=0.9), dict(dense_share="a")):
        with pytest.raises(ClipforgeError):
            _mixed(**bad)


def test_mixed_captions_are_deterministic() -> None:
    a, b = _mixed(), _mixed()
    forward = [a.captions_at(i) for i in range(300)]
    backward = [b.captions_at(i) for i in reversed(range(300))][::-1]  # another reading order (another worker)
    assert forward == backward
    assert [s.captions for s in (a[7], b[7])] == [forward[7], forward[7]]
    # another seed draws other styles
    other = ScenesDataset("train", size=N, seed=5, caption_style="alt", full_share=0.15)
    assert [other.style_at(i) for i in range(300)] != [a.style_at(i) for i in range(300)]


def test_recipe_carries_the_share_into_its_data_and_its_key() -> None:
    recipe = replace(AncestryRecipe.quick(), fashion=False)
    assert AncestryRecipe().full_share == 0.15 and AncestryRecipe().caption_style == "alt"
    data = training_data(replace(recipe, full_share=0.4))
    assert (data.caption_style, data.full_share) == ("alt", 0.4)
    record = asdict(AncestryRecipe())
    assert AncestryRecipe.from_record(record) == AncestryRecipe()
    # Records from before the share (no field) mean none; from before caption styles, full captions.
    old = {k: v for k, v in record.items() if k not in ("full_share", "dense_share")}
    assert AncestryRecipe.from_record(old) == replace(AncestryRecipe(), full_share=0.0, dense_share=0.0)
    older = {k: v for k, v in old.items() if k != "caption_style"}
    assert AncestryRecipe.from_record(older) == replace(AncestryRecipe(), full_share=0.0, dense_share=0.0,
                                                        caption_style="full")
    # so a cache trained without the share is not reused for the recipe with it
    assert not _same_recipe(old, AncestryRecipe()) and _same_recipe(record, AncestryRecipe())


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), "0.2", True, None])
def test_invalid_share_is_refused(tmp_path, share) -> None:
    with pytest.raises(ClipforgeError, match="full_share must be a number from 0 to 1"):
        train_ancestry(tmp_path / "anc", replace(AncestryRecipe.quick(), full_share=share))
    assert not (tmp_path / "anc").exists()  # refused before anything is written
    with pytest.raises(ClipforgeError, match="full_share"):
        ScenesDataset("train", size=4, full_share=share)


def test_invalid_share_flag_is_one_line(tmp_path, capsys) -> None:
    assert main(["ancestry", "--quick", "--full-share", "2", "--out", str(tmp_path / "anc")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "full_share" in err and "2.0" in err


TEXTS = ["a red star", "two blue circles and a green heart, left of a square"]


def _ids_and_length() -> tuple[list[int], int]:
    enc = get_tokenizer()(TEXTS, truncation=True, max_length=16)["input_ids"]
    return sorted({i for row in enc for i in row}), max(len(row) for row in enc)


def test_coverage_counts_the_rows_moved_by_hand() -> None:
    init, model = build("tiny", seed=3), build("tiny", seed=3)
    ids, length = _ids_and_length()
    cov = embedding_coverage(model, init, TEXTS)
    assert cov == {"captions": 2, "token_ids": len(ids), "token_ids_moved": 0, "positions": length,
                   "positions_moved": 0, "token_ids_not_moved": ids,
                   "tokens_not_moved": get_tokenizer().convert_ids_to_tokens(ids),
                   "positions_not_moved": list(range(length))}
    emb = model.text_model.embeddings
    unused_id = next(i for i in range(1000, 2000) if i not in ids)
    with torch.no_grad():
        emb.token_embedding.weight[ids[1], 5] += 1e-3
        emb.token_embedding.weight[ids[-1]] -= 0.5
        emb.token_embedding.weight[unused_id] += 1.0  # not used by the captions: not counted
        emb.position_embedding.weight[0, 0] += 1e-3
        emb.position_embedding.weight[length - 1] += 1.0
        emb.position_embedding.weight[length] += 1.0  # past every caption's end: not counted
    cov = embedding_coverage(model, init, TEXTS)
    assert (cov["token_ids"], cov["token_ids_moved"], cov["positions"], cov["positions_moved"]) == (
        len(ids), 2, length, 2)
    assert cov["token_ids_not_moved"] == [i for i in ids if i not in (ids[1], ids[-1])]
    assert cov["positions_not_moved"] == list(range(1, length - 1))


def test_coverage_of_the_pools_in_metrics_and_summary() -> None:
    recipe = AncestryRecipe.quick()
    init, model = build("tiny", seed=0), build("tiny", seed=0)
    with torch.no_grad():
        model.text_model.embeddings.position_embedding.weight.add_(1.0)  # every position moved, no token
    cov = coverage(model, init, recipe, n=40)
    assert set(cov) == {"dense", "full"}
    for c in cov.values():
        assert c["captions"] == 40 and c["token_ids"] > 10 and c["token_ids_moved"] == 0
        assert c["positions"] == c["positions_moved"] <= 16
    line = coverage_line(cov)
    assert line.startswith("embedding rows moved from init / used by 40 held-out captions: dense 0/")
    metric = {"acc1": 0.5}
    retrieval = {f"{d}_retrieval_recall@{k}": 0.1 for d in ("image", "text") for k in (1, 5, 10)}
    block = {"fashion_mnist": metric, "scenes_retrieval": retrieval, "mmvp": {"mean": 0.5}}
    assert summary({"trained": block, "random_init": block, "coverage": cov}).endswith(line + ".")
    assert "Coverage" not in summary({"trained": block, "random_init": block})
