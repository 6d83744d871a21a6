"""Sizing rules of a DMU run (docs/methods.md A.1, A.4): clusters per stage, epochs, the baselines' steps.

* `clusters_per_stage`: c clusters per MCL stage (k_img · k_txt) such that the c^S accumulated clusters
  of the last of S stages hold about `target_batches` global batches each: c = round((N / (target · B))^(1/S)),
  at least 1. The released run: N ≈ 1.2M pairs, B = 800, S = 3 gives c = round(750^(1/3)) = 9, its 3 × 3,
  with ~700 stage-3 clusters of ~1.8 batches each.
* `cluster_grid`: c as k_img × k_txt, the most balanced factor pair (a prime c clusters the images only).
* `epoch_steps`: one epoch of the pool in full global batches (what `steps=None` means for router
  training and direct fine-tuning; an MCL stage's `steps=None` is one epoch of its cluster sampler, which
  holds the same samples in a few more, smaller batches: the clusters' remainders).
* `data_matched_steps` (S) and `compute_matched_steps` (T = (E − 1)·S + R): the baselines' step counts. S
  steps of batch B see what one expert's stage saw (one epoch of the pool: the paper's Table 4 model); T
  steps see what the whole CLIP-MoE saw (E − 1 stage epochs and one router epoch), so their FLOPs match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ClipforgeError


def _check(num_samples: int, global_batch: int) -> None:
    if num_samples < 1 or global_batch < 1:
        raise ClipforgeError(f"sizing needs a positive pool and batch, got {num_samples} samples, batch {global_batch}")


def epoch_steps(num_samples: int, global_batch: int) -> int:
    """Full global batches in one pass over `num_samples` (drop-last; the batch is clamped to the pool)."""
    _check(num_samples, global_batch)
    return max(1, num_samples // min(global_batch, num_samples))


def data_matched_steps(num_samples: int, global_batch: int) -> int:
    """S: the steps of a baseline that sees what one MCL stage (one expert) saw: one epoch of the pool."""
    return epoch_steps(num_samples, global_batch)


def compute_matched_steps(num_samples: int, global_batch: int, num_experts: int,
                          router_steps: int | None = None) -> int:
    """T = (E − 1)·S + R: the steps of a baseline that sees what the whole CLIP-MoE saw (R: the router
    steps, default one epoch)."""
    if num_experts < 2:
        raise ClipforgeError(f"a CLIP-MoE needs at least 2 experts, got {num_experts}")
    if router_steps is not None and router_steps < 0:
        raise ClipforgeError(f"router steps must be >= 0, got {router_steps}")
    s = data_matched_steps(num_samples, global_batch)
    return (num_experts - 1) * s + (s if router_steps is None else router_steps)


def clusters_per_stage(num_samples: int, global_batch: int, stages: int, target_batches: float = 2.0) -> int:
    """c = round((N / (target · B))^(1/S)), at least 1: the clusters per MCL stage (k_img · k_txt) whose c^S
    accumulated clusters hold about `target_batches` global batches each at the last stage."""
    _check(num_samples, global_batch)
    if stages < 1:
        raise ClipforgeError(f"stages must be at least 1 (experts - 1), got {stages}")
    if not target_batches > 0:
        raise ClipforgeError(f"target batches per cluster must be positive, got {target_batches}")
    ratio = num_samples / (target_batches * global_batch)
    return max(1, round(ratio ** (1.0 / stages)))


def cluster_grid(clusters: int) -> tuple[int, int]:
    """(k_img, k_txt) with k_img · k_txt = `clusters`, as balanced as the factors allow (k_img ≥ k_txt)."""
    if clusters < 1:
        raise ClipforgeError(f"clusters per stage must be at least 1, got {clusters}")
    k_txt = max(d for d in range(1, math.isqrt(clusters) + 1) if clusters % d == 0)
    return clusters // k_txt, k_txt


@dataclass(frozen=True)
class ClusterSizing:
    """What `size_clusters` chose and what it means for the last stage's accumulated clusters."""

    clusters: int  # per stage, k_img · k_txt
    k_img: int
    k_txt: int
    stages: int
    accumulated: int  # c^S: at most this many non-empty clusters at the last stage
    samples_per_cluster: float  # N / c^S
    batches_per_cluster: float  # N / c^S / B


def size_clusters(num_samples: int, global_batch: int, stages: int, target_batches: float = 2.0) -> ClusterSizing:
    """`clusters_per_stage` and its `cluster_grid`, with the last stage's expected cluster size."""
    c = clusters_per_stage(num_samples, global_batch, stages, target_batches)
    k_img, k_txt = cluster_grid(c)
    acc = c ** stages
    return ClusterSizing(c, k_img, k_txt, stages, acc, num_samples / acc, num_samples / acc / global_batch)
