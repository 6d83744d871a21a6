"""k-means in torch: what `clusters.kmeans` uses where faiss is not installed (it is an optional extra).

Same algorithm as faiss's `Kmeans` with the settings clusters.py passes: k-means++ (or random) seeding,
Lloyd iterations on all points, centroids re-normalised each iteration when `spherical` (assignment by
inner product), an empty cluster re-seeded with the point farthest from its centroid. Seeded and
deterministic on the CPU; runs on `device` (a GPU when there is one) in row chunks, so [N, k] distances
are never held at once for large N. Its labels are not faiss's bit for bit (different RNG), but on data
with clear clusters both find the same partition (tests/test_moe_clusters.py holds a faiss fixture).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CHUNK = 65_536


def _scores(x: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Higher is closer: inner product (spherical) or −squared L2 distance."""
    dots = x @ c.T
    return dots if spherical else 2 * dots - c.square().sum(1)


def _assign(x: Tensor, c: Tensor, spherical: bool) -> tuple[Tensor, Tensor]:
    """(labels, score of the chosen centroid) per row, in chunks."""
    labels, best = [], []
    for a in range(0, x.shape[0], CHUNK):
        s = _scores(x[a:a + CHUNK], c, spherical)
        v, i = s.max(1)
        labels.append(i)
        best.append(v)
    return torch.cat(labels), torch.cat(best)


def _seed(x: Tensor, k: int, init: str, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=g, device="cpu")[:k].to(x.device)].clone()
    centers = [x[int(torch.randint(n, (1,), generator=g))]]
    d2 = (x - centers[0]).square().sum(1)
    for _ in range(1, k):  # k-means++: the next centre drawn with probability ∝ squared distance
        p = (d2 / d2.sum()).double().cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n, dtype=torch.double)
        nxt = x[int(torch.multinomial(p, 1, generator=g))]
        centers.append(nxt)
        d2 = torch.minimum(d2, (x - nxt).square().sum(1))
    return torch.stack(centers)


def torch_kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 50, *, spherical: bool = True,
                 init: str = "kmeans++", max_points: int | None = None, device: str | None = None) -> np.ndarray:
    """Labels int64 [N] of `k` clusters of the rows of `x` (float32); see the module docstring."""
    from ..distributed import default_device

    dev = torch.device(device) if device is not None else default_device()  # the command's --device
    g = torch.Generator().manual_seed(int(seed))
    full = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    train = full
    if max_points is not None and max_points * k < full.shape[0]:
        train = full[torch.randperm(full.shape[0], generator=g)[: max_points * k].to(dev)]
    c = _seed(train, k, init, g)
    if spherical:
        c = torch.nn.functional.normalize(c, dim=1)
    for _ in range(int(niter)):
        labels, score = _assign(train, c, spherical)
        sums = torch.zeros_like(c).index_add_(0, labels, train)
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().flatten().tolist()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(sums.dtype), c)
        for e in empty:  # re-seed with the worst-served point, then stop it being chosen twice
            far = int(score.argmin())
            c[e] = train[far]
            score[far] = float("inf")
        if spherical:
            c = torch.nn.functional.normalize(c, dim=1)
    return _assign(full, c, spherical)[0].cpu().numpy().astype(np.int64)
