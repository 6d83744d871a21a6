"""Evaluation metrics on embedding and logit tensors (no models here).

Definitions follow CLIP_benchmark: retrieval recall@k in both directions, zero-shot classifiers built
from averaged prompt embeddings, top-k accuracy and mean per-class recall (balanced accuracy).

Ties. Every ranking in this module uses one deterministic rule, so a result never depends on how a
`topk` kernel happens to order equal scores. Candidates are ordered by score, highest first, and
equal scores by candidate index, lowest first (a stable sort). The 0-based rank of a candidate with
score s at index j is therefore

    rank = #(candidates with score > s) + #(candidates with score == s and index < j)

and the candidate is "in the top k" iff rank < k. A positive that ties with an earlier negative thus
loses the tie; in the worst case (all scores equal) the ranking is the index order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ClipforgeError


def _check_finite(x: Tensor, what: str) -> None:
    # A NaN score compares false with everything, which would give it rank 0: refuse instead of
    # reporting a perfect score for a diverged model.
    if not torch.isfinite(x).all():
        raise ClipforgeError(f"{what} contain NaN or infinite values")


def _as_float(x: Tensor) -> Tensor:
    """At least float32 (half-precision scores tie far too often); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ClipforgeError(f"k values must be positive integers, got {ks}")
    return ks


def stable_rank(scores: Tensor, target: Tensor) -> Tensor:
    """0-based rank of candidate `target[r]` in each row `scores[r]` under the module's tie rule.

    scores: [R, N]; target: LongTensor [R] of column indices. Returns LongTensor [R].
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    s = scores[rows, target].unsqueeze(1)
    cols = torch.arange(scores.shape[1], device=scores.device)
    higher = (scores > s).sum(1)
    tied_before = ((scores == s) & (cols.unsqueeze(0) < target.unsqueeze(1))).sum(1)
    return higher + tied_before


def _best_positive(scores: Tensor, positive: Tensor) -> Tensor:
    """Column index of each row's first positive in the stable order (highest score, lowest index).

    Rows without a positive get index 0; the caller masks them out.
    """
    masked = scores.masked_fill(~positive, float("-inf"))
    best = masked.max(1, keepdim=True).values
    cols = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    # Lowest index among the positives that reach the best score.
    candidates = torch.where(positive & (masked == best), cols, scores.shape[1])
    return candidates.min(1).values.clamp(max=scores.shape[1] - 1)


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 1024,
    with_ranks: bool = False,
) -> dict[str, float]:
    """Image-text retrieval recall@k in both directions (CLIP_benchmark's definitions).

    image_emb [Ni, D], text_emb [Nt, D]: embeddings (normalised here). text_to_image [Nt]: the index
    of each caption's image; an image may own several captions.

    * ``image_retrieval_recall@k`` (text → image): fraction of captions whose image is in the top k
      images.
    * ``text_retrieval_recall@k`` (image → text): fraction of images with at least one of their
      captions in the top k captions. An image with no caption has nothing to retrieve and is left
      out of this average (CLIP_benchmark never meets one).

    Ties follow the module's stable rule (see the module docstring): a positive tied with a
    lower-indexed candidate ranks below it. k larger than the candidate count gives recall 1.
    Scores are computed ``block_size`` queries at a time, so memory is O(block_size × N), never
    O(Ni × Nt). With ``with_ranks``, also ``*_mean_rank`` and ``*_median_rank`` (1-based ranks of
    the best positive).
    """
    ks = _check_ks(ks)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ClipforgeError(
            f"embeddings must be [N, D] with equal D, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=text_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if t2i.shape != (n_txt,):
        raise ClipforgeError(f"text_to_image must have one entry per caption ({n_txt}), got {tuple(t2i.shape)}")
    if n_img == 0 or n_txt == 0:
        raise ClipforgeError("retrieval needs at least one image and one caption")
    if t2i.min() < 0 or t2i.max() >= n_img:
        raise ClipforgeError(f"text_to_image holds an index outside [0, {n_img})")
    if block_size < 1:
        raise ClipforgeError(f"block_size must be positive, got {block_size}")
    dtype = torch.promote_types(_as_float(image_emb).dtype, _as_float(text_emb).dtype)
    img = torch.nn.functional.normalize(image_emb.to(dtype), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.to(img), dim=-1)
    t2i = t2i.to(img.device)
    _check_finite(img, "image embeddings")
    _check_finite(txt, "text embeddings")

    # Text → image: each caption has exactly one positive image.
    t2i_ranks = torch.cat([
        stable_rank(txt[a:a + block_size] @ img.T, t2i[a:a + block_size])
        for a in range(0, n_txt, block_size)
    ])
    # Image → text: an image counts as a hit iff its best-placed caption is within k, and in a
    # total order that caption is the positive with the highest score (lowest index on ties).
    has_caption = torch.zeros(n_img, dtype=torch.bool, device=img.device)
    has_caption[t2i] = True
    i2t_parts = []
    for a in range(0, n_img, block_size):
        scores = img[a:a + block_size] @ txt.T
        idx = torch.arange(a, a + scores.shape[0], device=img.device)
        positive = t2i.unsqueeze(0) == idx.unsqueeze(1)
        i2t_parts.append(stable_rank(scores, _best_positive(scores, positive)))
    i2t_ranks = torch.cat(i2t_parts)[has_caption]

    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (t2i_ranks < k).double().mean().item()
        out[f"text_retrieval_recall@{k}"] = (i2t_ranks < k).double().mean().item()
    if with_ranks:
        for name, r in (("image_retrieval", t2i_ranks), ("text_retrieval", i2t_ranks)):
            r1 = (r + 1).double()
            out[f"{name}_mean_rank"] = r1.mean().item()
            out[f"{name}_median_rank"] = r1.median().item()
    return out


def zeroshot_classifier(text_emb_per_class: Sequence[Tensor]) -> Tensor:
    """Zero-shot weights [D, C]: per class, the mean of its normalised template embeddings,
    normalised again (CLIP's prompt ensembling)."""
    if len(text_emb_per_class) == 0:
        raise ClipforgeError("zero-shot classifier needs at least one class")
    cols = []
    for c, e in enumerate(text_emb_per_class):
        if e.ndim != 2 or e.shape[0] == 0:
            raise ClipforgeError(f"class {c}: expected [n_templates, D] embeddings, got {tuple(e.shape)}")
        mean = torch.nn.functional.normalize(_as_float(e), dim=-1).mean(0)
        cols.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.stack(cols, dim=1)


def classification_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` (only when there are at least 5 classes) and ``mean_per_class_recall``.

    Ties use the module's stable rule: a true class tied with a lower-indexed class ranks below it.
    Mean per-class recall is the mean, over the classes present in ``labels``, of the fraction of
    that class's samples predicted top-1 (sklearn's balanced accuracy, as in CLIP_benchmark).
    """
    if logits.ndim != 2:
        raise ClipforgeError(f"logits must be [N, C], got {tuple(logits.shape)}")
    n, n_cls = logits.shape
    labels = torch.as_tensor(labels, dtype=torch.long, device=logits.device)
    if labels.shape != (n,) or n == 0:
        raise ClipforgeError(f"need one label per logit row ({n} > 0), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= n_cls:
        raise ClipforgeError(f"a label lies outside [0, {n_cls})")
    _check_finite(logits, "logits")
    rank = stable_rank(_as_float(logits), labels)
    top1 = (rank == 0).double()
    out = {"acc1": top1.mean().item()}
    if n_cls >= 5:
        out["acc5"] = (rank < 5).double().mean().item()
    per_class_hits = torch.zeros(n_cls, dtype=torch.float64, device=logits.device).index_add_(0, labels, top1)
    support = torch.bincount(labels, minlength=n_cls).double()
    present = support > 0
    out["mean_per_class_recall"] = (per_class_hits[present] / support[present]).mean().item()
    return out


def pair_accuracy(sim: Tensor) -> float:
    """MMVP-style pair accuracy: sim[p, i, j] is the score of image i with caption j in pair p.

    A pair counts iff image a strictly prefers caption a and image b strictly prefers caption b;
    ties (and NaNs) count as wrong. A model guessing at random scores 0.25.
    """
    if sim.ndim != 3 or sim.shape[1:] != (2, 2) or sim.shape[0] == 0:
        raise ClipforgeError(f"pair scores must be [P, 2, 2] with P > 0, got {tuple(sim.shape)}")
    ok = (sim[:, 0, 0] > sim[:, 0, 1]) & (sim[:, 1, 1] > sim[:, 1, 0])
    return ok.double().mean().item()
