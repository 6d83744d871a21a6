"""The MCL batch sampler: every global batch from one accumulated cluster, the same cluster on every rank.

Per epoch (a `torch.Generator` seeded from (seed, epoch)): each batching group's members are shuffled
and cut into global batches; then groups are visited round-robin, one batch from each group that has
batches left per round, in an order reshuffled every round (docs/methods.md A.1). Rank r takes slice r of each
global batch, so ranks see the same cluster at the same step and disjoint samples.

Policies for sizes that are not a multiple of the global batch G (docs/methods.md A.1):

* `drop`: the released code: only full batches; clusters smaller than G and every remainder dropped.
* `keep_remainder` (default): each cluster's remainder becomes one smaller batch (never mixing
  clusters), cut down to a multiple of the world size so it splits evenly over ranks; a remainder
  below `min_batch` samples (a contrastive batch of one has no negatives) is dropped.
* `merge_small`: clusters smaller than `min_cluster_size` (default G) are pooled by parent (their
  cluster at the previous stage) into one group per parent, then batched like `keep_remainder`.

Which samples a truncated remainder loses changes every epoch (they are the tail of that epoch's
shuffle); the counts in `report()` do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ClipforgeError

POLICIES = ("keep_remainder", "drop", "merge_small")


@dataclass
class _Plan:
    """Epoch-independent batching: the groups (member indices), their batch sizes, and the accounting."""

    members: list[np.ndarray]
    batch_sizes: list[list[int]]
    report: dict[str, Any]


def _groups(labels: np.ndarray, policy: str, min_cluster_size: int, parents: np.ndarray | None
            ) -> tuple[list[np.ndarray], list[int], dict[str, int]]:
    """Members of each batching group, how many original clusters each holds, and merge counts."""
    num = int(labels.max()) + 1
    order = np.argsort(labels, kind="stable")  # stable: members stay in index order
    bounds = np.searchsorted(labels[order], np.arange(num + 1))
    clusters = [order[bounds[c]:bounds[c + 1]] for c in range(num)]
    clusters = [(c, m) for c, m in enumerate(clusters) if len(m)]
    merged = {"clusters": 0, "samples": 0, "groups": 0}
    if policy != "merge_small":
        return [m for _, m in clusters], [1] * len(clusters), merged
    if parents is None:
        parents = np.zeros(num, dtype=np.int64)  # one round of clustering: every parent is the root
    parents = np.asarray(parents, dtype=np.int64)
    if len(parents) < num:
        raise ClipforgeError(f"parents has {len(parents)} entries but labels have {num} clusters")
    keyed: dict[tuple[int, int], list[np.ndarray]] = {}
    for c, m in clusters:
        small = len(m) < min_cluster_size
        keyed.setdefault((1, int(parents[c])) if small else (0, c), []).append(m)
        if small:
            merged["clusters"] += 1
            merged["samples"] += len(m)
    merged["groups"] = sum(1 for k in keyed if k[0] == 1)
    keys = sorted(keyed)
    return [np.sort(np.concatenate(keyed[k])) for k in keys], [len(keyed[k]) for k in keys], merged


def plan_batches(labels: np.ndarray, global_batch_size: int, world_size: int = 1, policy: str = "keep_remainder",
                 min_cluster_size: int | None = None, parents: np.ndarray | None = None, min_batch: int = 2) -> _Plan:
    """Group the samples and size every group's batches under `policy`; count what is kept and dropped."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if policy not in POLICIES:
        raise ClipforgeError(f"unknown cluster policy {policy!r}; choose {', '.join(POLICIES)}")
    if labels.size == 0:
        raise ClipforgeError("no labels to batch")
    if labels.min() < 0:
        raise ClipforgeError("cluster labels must be non-negative")
    if global_batch_size < 1 or world_size < 1 or global_batch_size % world_size:
        raise ClipforgeError(f"global batch {global_batch_size} does not split over {world_size} ranks")
    g = global_batch_size
    min_size = g if min_cluster_size is None else int(min_cluster_size)
    members, counts, merged = _groups(labels, policy, min_size, parents)
    floor = max(int(min_batch), world_size, 1)
    drop = {"small_clusters": 0, "remainders": 0, "truncation": 0, "tiny_remainders": 0}
    kept_clusters = dropped_clusters = full_batches = rem_batches = 0
    sizes: list[list[int]] = []
    for m, held in zip(members, counts):
        n = len(m)
        full, rem = divmod(n, g)
        batches = [g] * full
        if policy == "drop":
            drop["small_clusters" if full == 0 else "remainders"] += rem
        elif rem:
            r = rem - rem % world_size
            drop["truncation"] += rem - r
            if r >= floor:
                batches.append(r)
                rem_batches += 1
            else:
                drop["tiny_remainders"] += r
        full_batches += full
        sizes.append(batches)
        if batches:
            kept_clusters += held
        else:
            dropped_clusters += held
    n = int(labels.size)
    kept = sum(sum(b) for b in sizes)
    all_sizes = [s for b in sizes for s in b]
    report = {
        "policy": policy, "num_samples": n, "num_clusters": kept_clusters + dropped_clusters,
        "global_batch_size": g, "world_size": world_size, "min_batch": floor,
        "min_cluster_size": min_size if policy == "merge_small" else None,
        "kept": {"samples": kept, "share": kept / n, "clusters": kept_clusters, "groups": sum(1 for b in sizes if b),
                 "batches": len(all_sizes), "full_batches": full_batches, "remainder_batches": rem_batches},
        "dropped": {"samples": n - kept, "share": (n - kept) / n, "clusters": dropped_clusters, **drop},
        "merged": merged,
        "batch_size": ({"min": min(all_sizes), "max": max(all_sizes), "mean": kept / len(all_sizes)}
                       if all_sizes else None),
    }
    return _Plan(members, sizes, report)


def policy_report(labels: np.ndarray, global_batch_size: int, world_size: int = 1, parents: np.ndarray | None = None,
                  min_cluster_size: int | None = None, min_batch: int = 2) -> dict[str, dict[str, Any]]:
    """`plan_batches(...).report` for every policy, to log what each would keep and drop."""
    return {p: plan_batches(labels, global_batch_size, world_size, p, min_cluster_size, parents, min_batch).report
            for p in POLICIES}


def _epoch_seed(seed: int, epoch: int) -> int:
    # A pair, not seed + epoch: (seed 0, epoch 1) and (seed 1, epoch 0) must not share a stream.
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


ORDERS = ("shuffled", "fixed")


class ClusterBatchSampler:
    """Per-rank index batches; each global batch drawn from one cluster (see the module docstring).

    Follows the `StatefulBatchSampler` contract: iterating yields the rest of the current epoch from
    the stored (epoch, position) and then moves to the next epoch's start.
    """

    def __init__(self, labels: np.ndarray, global_batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 policy: str = "keep_remainder", min_cluster_size: int | None = None,
                 parents: np.ndarray | None = None, min_batch: int = 2, order: str = "shuffled") -> None:
        if order not in ORDERS:
            raise ClipforgeError(f"cluster order must be one of {', '.join(ORDERS)}, got {order!r}")
        if not 0 <= rank < world_size:
            raise ClipforgeError(f"rank {rank} is outside world size {world_size}")
        self.plan = plan_batches(labels, global_batch_size, world_size, policy, min_cluster_size, parents, min_batch)
        self.global_batch_size, self.seed, self.rank, self.world_size = global_batch_size, seed, rank, world_size
        self.policy, self.order = policy, order
        self.epoch = 0
        self.position = 0  # global batches already handed out in this epoch
        if len(self) == 0:
            raise ClipforgeError(f"policy {policy!r} keeps no batch of {global_batch_size} from "
                                 f"{self.plan.report['num_samples']} samples")

    def __len__(self) -> int:
        """Batches per epoch (every rank gets this many)."""
        return self.plan.report["kept"]["batches"]

    def report(self) -> dict[str, Any]:
        """What this sampler's policy keeps and drops (samples, shares, clusters, batches)."""
        return self.plan.report

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches (dataset indices, all ranks together) of `epoch`, in order."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        shuffled = [m[torch.randperm(len(m), generator=gen).numpy()] for m in self.plan.members]
        starts = [np.concatenate([[0], np.cumsum(b)[:-1]]).astype(np.int64) if b else []
                  for b in self.plan.batch_sizes]
        nxt = [0] * len(shuffled)
        active = [i for i, b in enumerate(self.plan.batch_sizes) if b]
        out: list[np.ndarray] = []
        while active:
            # "fixed": groups visited 0..C−1 every round, as the released code; "shuffled": reshuffled per round.
            shuffle = self.order == "shuffled"
            visit = torch.randperm(len(active), generator=gen).tolist() if shuffle else range(len(active))
            for j in visit:
                g = active[j]
                k = nxt[g]
                out.append(shuffled[g][starts[g][k]:starts[g][k] + self.plan.batch_sizes[g][k]])
                nxt[g] += 1
            active = [g for g in active if nxt[g] < len(self.plan.batch_sizes[g])]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            b = batches[self.position]
            per = len(b) // self.world_size
            self.position += 1
            yield b[self.rank * per:(self.rank + 1) * per].tolist()
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ClipforgeError(f"sampler position {position} is outside an epoch of {len(self)} batches")
        self.epoch, self.position = int(state["epoch"]), position


def cluster_sampler_factory(labels: np.ndarray, seed: int = 0, policy: str = "keep_remainder",
                            min_cluster_size: int | None = None, parents: np.ndarray | None = None,
                            min_batch: int = 2, order: str = "shuffled") -> Callable[[Any, int], ClusterBatchSampler]:
    """A `train(batch_sampler=...)` factory: `(DistInfo, batch_size_per_rank) -> ClusterBatchSampler`."""

    def make(info: Any, batch_size_per_rank: int) -> ClusterBatchSampler:
        return ClusterBatchSampler(labels, batch_size_per_rank * info.world_size, seed, info.rank, info.world_size,
                                   policy, min_cluster_size, parents, min_batch, order)

    return make
