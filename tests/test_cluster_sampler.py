"""The MCL cluster sampler: cluster-pure global batches, coverage, rank disjointness, policies, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from clipforge.distributed import DistInfo
from clipforge.errors import ClipforgeError
from clipforge.moe.cluster_sampler import ClusterBatchSampler, cluster_sampler_factory, plan_batches, policy_report
from clipforge.train.sampler import ResumeView

G = 8
# Sizes: big with a remainder, exact multiple, small (< G), tiny (1), odd remainder, empty id 5.
SIZES = [37, 16, 5, 1, 11, 0, 3]
PARENTS = np.array([0, 0, 1, 1, 0, 0, 1])


def _labels(seed: int = 0) -> np.ndarray:
    lab = np.concatenate([np.full(n, c) for c, n in enumerate(SIZES)])
    return np.random.default_rng(seed).permutation(lab)


def _epoch(sampler: ClusterBatchSampler) -> list[list[int]]:
    return list(sampler)


def _ranks(labels, world, policy="keep_remainder", seed=0, **kw) -> list[list[list[int]]]:
    """One epoch per rank: [rank][step] -> indices."""
    return [_epoch(ClusterBatchSampler(labels, G, seed, r, world, policy, **kw)) for r in range(world)]


@pytest.mark.parametrize("policy", ["keep_remainder", "drop", "merge_small"])
@pytest.mark.parametrize("world", [1, 2])
def test_global_batches_are_cluster_pure_and_ranks_disjoint(policy, world):
    labels = _labels()
    per_rank = _ranks(labels, world, policy, parents=PARENTS)
    assert len({len(r) for r in per_rank}) == 1
    groups = labels if policy != "merge_small" else np.where(np.bincount(labels)[labels] < G,
                                                             100 + PARENTS[labels], labels)
    for step in zip(*per_rank):
        assert len({len(s) for s in step}) == 1  # equal slices: a gather needs equal shapes
        union = [i for s in step for i in s]
        assert len(set(union)) == len(union)  # disjoint across ranks
        assert len(set(groups[union].tolist())) == 1  # one cluster (or one merged group) per global batch


def test_keep_remainder_covers_every_sample_once():
    labels = _labels()
    batches = _epoch(ClusterBatchSampler(labels, G, seed=1, min_batch=1))
    seen = Counter(i for b in batches for i in b)
    assert sorted(seen) == list(range(len(labels))) and set(seen.values()) == {1}
    rep = plan_batches(labels, G, min_batch=1).report
    assert rep["dropped"]["samples"] == 0 and rep["kept"]["share"] == 1.0


def test_keep_remainder_two_ranks_reports_truncation():
    labels = _labels()
    per_rank = _ranks(labels, 2, seed=3)
    seen = Counter(i for r in per_rank for b in r for i in b)
    assert set(seen.values()) == {1}
    rep = plan_batches(labels, G, world_size=2).report
    # Odd remainders lose one sample each (37%8=5, 5, 1, 11%8=3, 3); the tiny cluster's 0 left is dropped.
    assert rep["dropped"]["truncation"] == 5
    assert len(seen) == rep["kept"]["samples"] == len(labels) - rep["dropped"]["samples"]


def test_drop_is_the_released_rule():
    labels = _labels()
    batches = _epoch(ClusterBatchSampler(labels, G, seed=0, policy="drop"))
    assert all(len(b) == G for b in batches)
    kept = Counter(int(labels[b[0]]) for b in batches)
    assert kept == {c: n // G for c, n in enumerate(SIZES) if n >= G}
    seen = [i for b in batches for i in b]
    assert len(set(seen)) == len(seen) == sum(n // G * G for n in SIZES)
    rep = plan_batches(labels, G, policy="drop").report
    assert rep["dropped"]["small_clusters"] == 5 + 1 + 3 and rep["dropped"]["remainders"] == 5 + 3
    assert rep["dropped"]["clusters"] == 3


def test_merge_small_pools_tiny_clusters_into_parent():
    labels = _labels()
    plan = plan_batches(labels, G, policy="merge_small", min_cluster_size=G, parents=PARENTS, min_batch=1)
    groups = [sorted(set(labels[m].tolist())) for m in plan.members]
    # Clusters 2, 3, 6 (sizes 5, 1, 3) all have parent 1: one group of 9; big clusters stay alone.
    assert sorted(groups) == [[0], [1], [2, 3, 6], [4]]
    assert plan.report["merged"] == {"clusters": 3, "samples": 9, "groups": 1}
    batches = _epoch(ClusterBatchSampler(labels, G, policy="merge_small", parents=PARENTS, min_batch=1))
    assert sorted(i for b in batches for i in b) == list(range(len(labels)))


def test_reports_add_up():
    labels = _labels()
    reports = policy_report(labels, G, world_size=2, parents=PARENTS)
    assert set(reports) == {"keep_remainder", "drop", "merge_small"}
    for policy, rep in reports.items():
        kept, dropped = rep["kept"], rep["dropped"]
        assert kept["samples"] + dropped["samples"] == len(labels)
        assert kept["share"] + dropped["share"] == pytest.approx(1.0)
        assert kept["clusters"] + dropped["clusters"] == rep["num_clusters"] == 6
        assert dropped["samples"] == sum(dropped[k] for k in ("small_clusters", "remainders", "truncation",
                                                              "tiny_remainders"))
        assert kept["batches"] == kept["full_batches"] + kept["remainder_batches"]
        assert kept["batches"] == len(ClusterBatchSampler(labels, G, 0, 0, 2, policy, parents=PARENTS))
    assert reports["drop"]["dropped"]["samples"] > reports["keep_remainder"]["dropped"]["samples"]


def test_seeded_sequences():
    labels = _labels()
    a = _epoch(ClusterBatchSampler(labels, G, seed=5))
    assert a == _epoch(ClusterBatchSampler(labels, G, seed=5))
    assert a != _epoch(ClusterBatchSampler(labels, G, seed=6))
    s = ClusterBatchSampler(labels, G, seed=5)
    assert _epoch(s) == a and _epoch(s) != a  # the next epoch reshuffles
    assert s.state_dict() == {"epoch": 2, "position": 0}


def test_round_robin_interleaves_clusters():
    labels = _labels()
    batches = _epoch(ClusterBatchSampler(labels, G, seed=0, policy="drop"))
    # Clusters 0, 1, 4 have 4, 2, 1 full batches: rounds visit {0, 1, 4}, {0, 1}, {0}, {0}.
    firsts = [int(labels[b[0]]) for b in batches]
    assert [sorted(firsts[:3]), sorted(firsts[3:5]), firsts[5:]] == [[0, 1, 4], [0, 1], [0, 0]]


def test_resume_mid_epoch_continues_the_sequence():
    labels = _labels()
    once = ClusterBatchSampler(labels, G, seed=2, rank=1, world_size=2)
    full = list(once) + list(once)
    ref = ClusterBatchSampler(labels, G, seed=2, rank=1, world_size=2)
    it = iter(ref)
    head = [next(it) for _ in range(3)]
    resumed = ClusterBatchSampler(labels, G, seed=2, rank=1, world_size=2)
    resumed.load_state_dict(ref.state_dict())
    assert head + list(resumed) + list(resumed) == full


def test_resume_through_the_training_loops_view():
    labels = _labels()
    view = ResumeView(ClusterBatchSampler(labels, G, seed=4))
    first = list(view)  # epoch 0
    it = iter(view)  # epoch 1: consume 2, as the loop would
    got = [next(it), next(it)]
    view.consumed = 2
    state = view.state_dict()
    again = ResumeView(ClusterBatchSampler(labels, G, seed=4))
    again.load_state_dict(state)
    rest = list(again)
    ref = ClusterBatchSampler(labels, G, seed=4)
    assert list(ref) == first and got + rest == list(ref)


def test_factory_and_errors():
    labels = _labels()
    s = cluster_sampler_factory(labels, seed=1)(DistInfo(1, 1, 2, None), G // 2)
    assert (s.global_batch_size, s.rank, s.world_size) == (G, 1, 2)
    with pytest.raises(ClipforgeError, match="policy"):
        ClusterBatchSampler(labels, G, policy="mix")
    with pytest.raises(ClipforgeError, match="split"):
        ClusterBatchSampler(labels, 7, world_size=2)
    with pytest.raises(ClipforgeError, match="position"):
        ClusterBatchSampler(labels, G).load_state_dict({"epoch": 0, "position": 999})
    with pytest.raises(ClipforgeError, match="keeps no batch"):
        ClusterBatchSampler(np.zeros(3, dtype=int), G, policy="drop")


def test_fixed_order_visits_clusters_in_index_order_each_round():
    labels = np.repeat(np.arange(3), 8)  # three clusters of 8 samples
    s = ClusterBatchSampler(labels, 4, seed=0, order="fixed")
    owners = [int(labels[b[0]]) for b in s.epoch_batches(0)]
    assert owners == [0, 1, 2, 0, 1, 2]
    shuffled = ClusterBatchSampler(labels, 4, seed=0, order="shuffled").epoch_batches(0)
    assert sorted(int(labels[b[0]]) for b in shuffled) == sorted(owners)
    with pytest.raises(ClipforgeError, match="cluster order"):
        ClusterBatchSampler(labels, 4, order="random")
