"""Metric definitions checked against hand-built score matrices."""

import math

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.eval.metrics import (
    classification_metrics,
    pair_accuracy,
    retrieval_metrics,
    stable_rank,
    zeroshot_classifier,
)


def embeddings_for(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm (image, text) embeddings whose cosine matrix text·imageᵀ equals `scores` [Nt, Ni].

    Images are one-hot; each text row is its score row plus a private filler dimension that brings
    it to unit norm.
    """
    n_txt, n_img = scores.shape
    img = torch.zeros(n_img, n_img + n_txt, dtype=torch.float64)
    img[:, :n_img] = torch.eye(n_img)
    txt = torch.zeros(n_txt, n_img + n_txt, dtype=torch.float64)
    txt[:, :n_img] = scores
    txt[torch.arange(n_txt), n_img + torch.arange(n_txt)] = (1 - scores.square().sum(1)).sqrt()
    return img, txt


# 3 images owning 1, 2 and 2 captions; rows: captions, columns: images.
T2I = torch.tensor([0, 1, 1, 2, 2])
S = torch.tensor([
    [0.50, 0.10, 0.20],  # caption 0 (image 0): image 0 first            → t2i rank 0
    [0.40, 0.30, 0.10],  # caption 1 (image 1): image 0 beats it          → rank 1
    [0.20, 0.10, 0.35],  # caption 2 (image 1): images 2 and 0 beat it    → rank 2
    [0.10, 0.20, 0.30],  # caption 3 (image 2): first                     → rank 0
    [0.45, 0.15, 0.05],  # caption 4 (image 2): last                      → rank 2
], dtype=torch.float64)
# Image → text, per column: image 0 scores captions [.50 .40 .20 .10 .45] → its caption 0 is first;
# image 1 [.10 .30 .10 .20 .15] → caption 1 first; image 2 [.20 .10 .35 .30 .05] → caption 3 second.


def test_retrieval_hand_computed_both_directions():
    img, txt = embeddings_for(S)
    m = retrieval_metrics(img, txt, T2I, ks=(1, 2, 3))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(3 / 5)
    assert m["image_retrieval_recall@3"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)


def test_retrieval_ranks_extras():
    img, txt = embeddings_for(S)
    m = retrieval_metrics(img, txt, T2I, ks=(1,), with_ranks=True)
    assert m["image_retrieval_mean_rank"] == pytest.approx((1 + 2 + 3 + 1 + 3) / 5)
    assert m["text_retrieval_mean_rank"] == pytest.approx((1 + 1 + 2) / 3)
    assert m["text_retrieval_median_rank"] == 1


def test_retrieval_ties_go_to_lower_index():
    # Text → image: the caption scores images 0 and 1 equally. Owning image 1 it loses the tie to
    # image 0; owning image 0 it wins.
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 1.0, 0.0]])
    lose = retrieval_metrics(img, txt, torch.tensor([1]), ks=(1, 2))
    assert lose["image_retrieval_recall@1"] == 0.0 and lose["image_retrieval_recall@2"] == 1.0
    win = retrieval_metrics(img, txt, torch.tensor([0]), ks=(1,))
    assert win["image_retrieval_recall@1"] == 1.0
    # Image → text: image 0 scores captions 0, 1, 2 equally; its captions are 1 and 2, so caption 0
    # (another image's) comes first and the best of its own ranks second.
    img = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    txt = torch.eye(4)[:3]
    m = retrieval_metrics(img, txt, torch.tensor([1, 0, 0]), ks=(1, 2))
    assert m["text_retrieval_recall@1"] == 0.5  # image 1 owns caption 0 but scores it 0: all tied
    assert m["text_retrieval_recall@2"] == 1.0


def test_stable_rank_all_equal_is_index_order():
    scores = torch.zeros(4, 4)
    assert stable_rank(scores, torch.arange(4)).tolist() == [0, 1, 2, 3]


def reference_recalls(img, txt, t2i, ks):
    """Brute force with Python's stable sort on (−score, index)."""
    img = torch.nn.functional.normalize(img, dim=-1)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    s = (txt @ img.T).tolist()
    out = {}
    for k in ks:
        hits = [t2i[t] in sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for t, row in enumerate(s)]
        out[f"image_retrieval_recall@{k}"] = sum(hits) / len(hits)
        hits = []
        for i in range(img.shape[0]):
            col = [s[t][i] for t in range(len(s))]
            top = sorted(range(len(col)), key=lambda t: (-col[t], t))[:k]
            hits.append(any(t2i[t] == i for t in top))
        out[f"text_retrieval_recall@{k}"] = sum(hits) / len(hits)
    return out


def sparse_signs(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Rows with four ±1 entries: norm exactly 2, so every cosine is an exact multiple of 1/4 and
    ties are frequent and exact whatever the matmul's summation order."""
    x = torch.zeros(n, d)
    for r in range(n):
        cols = torch.randperm(d, generator=g)[:4]
        x[r, cols] = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
    return x


def test_block_size_does_not_change_results_and_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    img, txt = sparse_signs(40, 8, g), sparse_signs(90, 8, g)
    t2i = torch.randint(0, 40, (90,), generator=g)
    ks = (1, 3, 5, 10)
    one = retrieval_metrics(img, txt, t2i, ks=ks, block_size=1)
    big = retrieval_metrics(img, txt, t2i, ks=ks, block_size=1024)
    seven = retrieval_metrics(img, txt, t2i, ks=ks, block_size=7)
    assert one == big == seven
    # Images without captions are left out of the text-retrieval average: compare with the
    # reference on the captioned images only (dropping the others changes no caption's ranking
    # among captions).
    ref = reference_recalls(img, txt, t2i.tolist(), ks)
    kept = sorted(set(t2i.tolist()))
    assert len(kept) < 40  # the case is exercised
    remap = {old: new for new, old in enumerate(kept)}
    ref_kept = reference_recalls(img[kept], txt, [remap[i] for i in t2i.tolist()], ks)
    for k in ks:
        assert big[f"image_retrieval_recall@{k}"] == pytest.approx(ref[f"image_retrieval_recall@{k}"])
        assert big[f"text_retrieval_recall@{k}"] == pytest.approx(ref_kept[f"text_retrieval_recall@{k}"])


def test_random_embeddings_recall_approaches_one():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(50, 16, generator=g), torch.randn(100, 16, generator=g)
    t2i = torch.arange(100) % 50
    m = retrieval_metrics(img, txt, t2i, ks=(1, 10, 25, 50, 100))
    for d in ("image", "text"):
        r = [m[f"{d}_retrieval_recall@{k}"] for k in (1, 10, 25, 50, 100)]
        assert r == sorted(r) and r[0] < 0.2 and r[-1] == 1.0
    assert m["image_retrieval_recall@50"] == 1.0  # k = number of images


def test_retrieval_rejects_bad_input():
    with pytest.raises(ClipforgeError):
        retrieval_metrics(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ClipforgeError):
        retrieval_metrics(torch.randn(2, 4), torch.full((1, 4), float("nan")), torch.tensor([0]))


def test_classification_metrics_imbalanced_with_ties():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    logits = torch.tensor([
        [5.0, 1, 1, 1, 1, 1],
        [5.0, 1, 1, 1, 1, 1],
        [3.0, 3, 1, 1, 1, 1],  # true class 0 tied with class 1: the lower index wins → correct
        [1.0, 1, 1, 1, 1, 1],  # all tied: class 0 has the lowest index → correct
        [2.0, 2, 1, 1, 1, 1],  # true class 1 tied with class 0 → loses the tie: rank 1
        [9.0, 8, 7, 6, 5, 4],  # true class 2 is third: rank 2
    ])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(4 / 6)
    assert m["acc5"] == 1.0
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 0) / 3)  # ≠ acc1: class 0 dominates
    # Three of six classes never appear: they do not enter the per-class mean.


def test_classification_acc5_only_with_five_classes():
    m = classification_metrics(torch.eye(4), torch.arange(4))
    assert set(m) == {"acc1", "mean_per_class_recall"} and m["acc1"] == 1.0
    last = torch.arange(7, 0, -1).float().unsqueeze(0)  # true class 6 ranked last of 7
    assert classification_metrics(last, torch.tensor([6]))["acc5"] == 0.0


def test_zeroshot_classifier_normalises_templates_then_mean():
    a = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # very different norms: each template weighs equally
    b = torch.tensor([[0.0, -2.0]])
    w = zeroshot_classifier([a, b])
    assert w.shape == (2, 2)
    assert torch.allclose(w[:, 0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(w[:, 1], torch.tensor([0.0, -1.0]))
    assert torch.allclose(w.norm(dim=0), torch.ones(2))


def test_pair_accuracy_ties_are_wrong():
    sim = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8]],  # both prefer their own caption → right
        [[0.9, 0.1], [0.8, 0.2]],  # image b prefers caption a → wrong
        [[0.5, 0.5], [0.1, 0.9]],  # image a ties → wrong
        [[0.6, 0.4], [0.3, 0.3]],  # image b ties → wrong
    ])
    assert pair_accuracy(sim) == 0.25
    assert pair_accuracy(torch.full((3, 2, 2), float("nan"))) == 0.0
    with pytest.raises(ClipforgeError):
        pair_accuracy(torch.zeros(2, 2))
