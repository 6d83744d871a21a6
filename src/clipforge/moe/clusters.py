"""MCL pseudo-labels: embed the training set, k-means both modalities, accumulate labels over stages.

After MCL stage s, the whole training set is embedded with the stage-s model (image embeddings U,
text embeddings W), each modality is clustered on its own, and the stage label is
`y = k_img · b + a` (a: image cluster, b: text cluster). The label a later stage trains on is the
*tuple* of all stage labels so far, (y^(0), …, y^(s)). Written as a base-k number it overflows after a
dozen stages of 9 clusters and is mostly empty, so we re-index the non-empty tuples to consecutive ids
at every stage (ordered like the tuples) and keep the per-stage labels, from which the tuple of any
id can be read back.

Clustering uses faiss k-means with k-means++ initialisation (as the released code's sklearn
`MiniBatchKMeans` does) on all points (faiss would otherwise subsample to 256 points per centroid);
faiss is optional (`clipforge[faiss]`: faiss-cpu beside a user's faiss-gpu would clobber it), and
without it the same algorithm runs in torch (`torch_kmeans`).
The embeddings are L2-normalised, so we default to *spherical* k-means (centroids renormalised,
points assigned by inner product): cosine geometry, the one CLIP's loss lives in. `spherical=False`
gives plain Euclidean k-means; on unit vectors the two differ only in the centroid norms.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ClipforgeError
from ..files import atomic_path, write_json

log = logging.getLogger("clipforge.moe")

INIT_METHODS = ("kmeans++", "random")


@contextlib.contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Temporarily run faiss with `threads` OpenMP threads (None: leave the setting alone)."""
    import faiss

    if threads is None:
        yield
        return
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _nonfinite_rows(x: np.ndarray, chunk: int = 65_536) -> int:
    """How many rows of `x` [N, D] hold a nan or inf (in row chunks: no [N, D] boolean copy)."""
    return sum(int((~np.isfinite(x[a:a + chunk])).any(axis=1).sum()) for a in range(0, len(x), chunk))


def _faiss():
    """The faiss module, or None where it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 50, *, spherical: bool = True, nredo: int = 1,
           init: str = "kmeans++", max_points: int | None = None, threads: int | None = None,
           gpu: bool | None = None, what: str = "embeddings", backend: str = "auto") -> np.ndarray:
    """Cluster the rows of `x` [N, D] into `k` groups with faiss (or torch); returns labels int64 [N].

    Deterministic for a given `seed` on the CPU (faiss seeds its own RNG; assignment and centroid
    sums are per point / per centroid, so the thread count does not change the result).
    `max_points` subsamples the training points (None: use all); every point is assigned at the end.
    `x` may be fp16 or a memmap: it is read as float32 (faiss's type). `gpu`: faiss's GPU index
    (None: when a GPU build of faiss sees a GPU; its sums may differ from the CPU's in the last bits).
    `what` names the rows in errors. Non-finite rows are refused (faiss would cluster them silently).
    `backend`: "faiss", "torch" (`torch_kmeans`, the same algorithm) or "auto" (faiss when installed:
    it is the optional `clipforge[faiss]` extra).
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ClipforgeError(f"unknown k-means backend {backend!r}; choose auto, faiss or torch")
    faiss = _faiss() if backend != "torch" else None
    if backend == "faiss" and faiss is None:
        raise ClipforgeError("k-means backend 'faiss' asked for, but faiss is not installed "
                             "(pip install 'clipforge[faiss]' or faiss-gpu)")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ClipforgeError(f"k-means needs a 2-d array [N, D], got shape {x.shape}")
    n, d = x.shape
    if k < 1:
        raise ClipforgeError(f"k must be positive, got {k}")
    if k > n:
        raise ClipforgeError(f"cannot make {k} clusters from {n} points")
    if init not in INIT_METHODS:
        raise ClipforgeError(f"unknown k-means init {init!r}; choose {', '.join(INIT_METHODS)}")
    bad = _nonfinite_rows(x)
    if bad:
        raise ClipforgeError(f"k-means: {bad} of {n} {what} rows are not finite (nan/inf); the model that embedded "
                             "them probably has non-finite weights (a diverged training run?)")
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if faiss is None:
        from .torch_kmeans import torch_kmeans

        return torch_kmeans(x, k, seed, niter, spherical=spherical, init=init, max_points=max_points)
    if gpu is None:
        gpu = bool(getattr(faiss, "get_num_gpus", lambda: 0)())
    method = (faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS if init == "kmeans++"
              else faiss.ClusteringInitMethod_RANDOM)
    per_centroid = n if max_points is None else max(1, -(-int(max_points) // k))
    km = faiss.Kmeans(d, k, niter=int(niter), nredo=int(nredo), seed=int(seed), spherical=spherical,
                      init_method=method, verbose=False,
                      # min 1: small sets (tests, tiny user data) are fine and need no stderr warning.
                      min_points_per_centroid=1, max_points_per_centroid=int(min(per_centroid, 2**31 - 1)),
                      gpu=bool(gpu))
    with _omp_threads(threads):
        km.train(x)
        _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64)


def stage_labels(image_emb: np.ndarray, text_emb: np.ndarray, k_img: int = 3, k_txt: int = 3, seed: int = 0,
                 **kmeans_kw: Any) -> np.ndarray:
    """One MCL stage label per sample: `k_img · b + a` in [0, k_img·k_txt) (METHODS A.1).

    a = k-means cluster of the image embedding, b = of the text embedding, clustered independently
    (images with `seed`, texts with `seed + 1`, so the two runs do not share their initial draws).
    """
    if len(image_emb) != len(text_emb):
        raise ClipforgeError(f"{len(image_emb)} image embeddings but {len(text_emb)} text embeddings")
    a = kmeans(image_emb, k_img, seed, what="image embedding", **kmeans_kw)
    b = kmeans(text_emb, k_txt, seed + 1, what="text embedding", **kmeans_kw)
    return (k_img * b + a).astype(np.int64)


def accumulate(prev_accumulated: np.ndarray | None, stage_label: np.ndarray, k: int) -> np.ndarray:
    """Accumulated pseudo-labels: consecutive ids of the non-empty tuples (previous tuple, stage label).

    Ids are ordered like the tuples (lexicographically), so id order equals the order of the base-k
    numbers the tuples spell; `prev_accumulated` must itself come from this function (or be None).
    """
    y = np.asarray(stage_label, dtype=np.int64)
    if y.ndim != 1:
        raise ClipforgeError(f"stage labels must be 1-d, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ClipforgeError(f"stage labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
    if prev_accumulated is None:
        combined = y
    else:
        prev = np.asarray(prev_accumulated, dtype=np.int64)
        if prev.shape != y.shape:
            raise ClipforgeError(f"previous labels have shape {prev.shape}, stage labels {y.shape}")
        # prev ids are < N (consecutive), so prev·k + y < N·k: no overflow at any realistic N.
        combined = prev * k + y
    _, ids = np.unique(combined, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def nmi(labels: np.ndarray, attribute: np.ndarray) -> float:
    """Normalised mutual information between cluster labels and an attribute (sklearn, arithmetic mean)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(attribute), np.asarray(labels)))


def _first_index(ids: np.ndarray, num: int) -> np.ndarray:
    """For each id in [0, num), the first position holding it."""
    first = np.full(num, len(ids), dtype=np.int64)
    np.minimum.at(first, ids, np.arange(len(ids), dtype=np.int64))
    return first


@dataclass
class ClusterLabels:
    """Accumulated MCL labels after S clustering rounds (the labels MCL stage S trains on).

    `ids` [N]: accumulated cluster id (consecutive, tuple order); `stage_labels` [S, N]: row s is y^(s),
    from the stage-s model; `k_img`, `k_txt`, `seeds`: per round. `parents` [C]: each cluster's
    accumulated id after S−1 rounds (after one round every cluster's parent is the root, id 0).
    """

    ids: np.ndarray
    stage_labels: np.ndarray
    k_img: list[int]
    k_txt: list[int]
    seeds: list[int]
    parents: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.stage_labels = np.atleast_2d(np.asarray(self.stage_labels, dtype=np.int64))
        if self.parents is None:
            self.parents = self._compute_parents()
        self.parents = np.asarray(self.parents, dtype=np.int64)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def extend(cls, prev: ClusterLabels | None, stage_label: np.ndarray, k_img: int, k_txt: int,
               seed: int) -> ClusterLabels:
        """`prev` plus one more round of stage labels (None: the first round)."""
        y = np.asarray(stage_label, dtype=np.int64)
        ids = accumulate(None if prev is None else prev.ids, y, k_img * k_txt)
        if prev is None:
            return cls(ids, y[None], [k_img], [k_txt], [seed])
        return cls(ids, np.vstack([prev.stage_labels, y[None]]), prev.k_img + [k_img], prev.k_txt + [k_txt],
                   prev.seeds + [seed])

    def _compute_parents(self) -> np.ndarray:
        if self.rounds == 1:
            return np.zeros(self.num_clusters, dtype=np.int64)
        prev = None
        for s in range(self.rounds - 1):
            prev = accumulate(prev, self.stage_labels[s], self.k_img[s] * self.k_txt[s])
        return prev[_first_index(self.ids, self.num_clusters)]

    # -- views ----------------------------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        return int(self.stage_labels.shape[0])

    @property
    def stage(self) -> int:
        """The MCL stage these labels train (= the number of clustering rounds)."""
        return self.rounds

    @property
    def num_samples(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_clusters(self) -> int:
        return int(self.ids.max()) + 1 if self.ids.size else 0

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.ids, minlength=self.num_clusters)

    def tuples(self) -> np.ndarray:
        """[C, S]: the tuple (y^(0), …, y^(S−1)) of every accumulated id."""
        return self.stage_labels[:, _first_index(self.ids, self.num_clusters)].T.copy()

    def summary(self, attributes: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """What `clusters_stage{S}.json` holds: sizes, shares, parents, tuples, per-modality sizes, NMI."""
        n, sizes = self.num_samples, self.sizes
        k_img, k_txt = self.k_img[-1], self.k_txt[-1]
        y = self.stage_labels[-1]
        out: dict[str, Any] = {
            "stage": self.stage, "num_samples": n, "num_clusters": self.num_clusters,
            "k_img": k_img, "k_txt": k_txt, "seed": self.seeds[-1],
            "per_round": {"k_img": self.k_img, "k_txt": self.k_txt, "seeds": self.seeds},
            "size_min": int(sizes.min()), "size_median": float(np.median(sizes)), "size_max": int(sizes.max()),
            "sizes": sizes.tolist(), "share": (sizes / max(n, 1)).round(6).tolist(),
            "parents": self.parents.tolist(), "tuples": self.tuples().tolist(),
            "stage_label_sizes": np.bincount(y, minlength=k_img * k_txt).tolist(),
            "image_cluster_sizes": np.bincount(y % k_img, minlength=k_img).tolist(),
            "text_cluster_sizes": np.bincount(y // k_img, minlength=k_txt).tolist(),
        }
        if attributes:
            out["nmi"] = {name: {"accumulated": nmi(self.ids, attr), "stage": nmi(y, attr),
                                 "image": nmi(y % k_img, attr), "text": nmi(y // k_img, attr)}
                          for name, attr in attributes.items()}
        return out

    # -- files ----------------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, attributes: Mapping[str, np.ndarray] | None = None,
             extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
        """Write `labels_stage{S}.npz` (arrays, no pickle) and `clusters_stage{S}.json`, both atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        npz = out_dir / f"labels_stage{self.stage}.npz"
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=self.ids, stage_labels=self.stage_labels, parents=self.parents,
                     k_img=np.asarray(self.k_img, np.int64), k_txt=np.asarray(self.k_txt, np.int64),
                     seeds=np.asarray(self.seeds, np.int64))
        js = write_json(out_dir / f"clusters_stage{self.stage}.json", {**self.summary(attributes), **(extra or {})})
        return npz, js

    @classmethod
    def load(cls, path: str | os.PathLike, stage: int | None = None) -> ClusterLabels:
        """Read a `labels_stage{S}.npz` file, or the one for `stage` in a directory."""
        path = Path(path)
        if path.is_dir():
            if stage is None:
                found = sorted(path.glob("labels_stage*.npz"))
                if len(found) != 1:
                    raise ClipforgeError(f"{path}: expected one labels_stage*.npz, found {len(found)}; pass stage")
                path = found[0]
            else:
                path = path / f"labels_stage{stage}.npz"
        if not path.is_file():
            raise ClipforgeError(f"{path}: no such labels file")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("ids", "stage_labels", "parents", "k_img", "k_txt", "seeds")}
        except (KeyError, ValueError, OSError) as e:
            raise ClipforgeError(f"{path}: not a clipforge labels file ({e})") from None
        return cls(arrays["ids"], arrays["stage_labels"], arrays["k_img"].tolist(), arrays["k_txt"].tolist(),
                   arrays["seeds"].tolist(), arrays["parents"])


# The embedding pass lives in its own module; it is part of this one's interface.
from .embedding import embed_dataset  # noqa: E402


def labels_for_stage(model: nn.Module, dataset: Any, prev: ClusterLabels | None, k_img: int, k_txt: int,
                     seed: int, *, batch_size: int = 256, device: Any = None, caption: str = "first",
                     num_workers: int | None = None, spill_dir: str | os.PathLike | None = None,
                     **kmeans_kw: Any) -> ClusterLabels:
    """One MCL clustering round on every rank: sharded embedding, k-means on rank 0, labels broadcast.

    Every rank must call it; all return the same labels.
    """
    from .. import distributed as D

    u, w = embed_dataset(model, dataset, batch_size=batch_size, device=device, caption=caption,
                         num_workers=num_workers, gather="main", spill_dir=spill_dir)
    labels, error = None, None
    if D.rank() == 0:
        assert u is not None and w is not None
        try:
            y = stage_labels(u, w, k_img, k_txt, seed=seed, **kmeans_kw)
            labels = ClusterLabels.extend(prev, y, k_img, k_txt, seed)
        except ClipforgeError as e:  # sent to every rank: the others would wait in the broadcast forever
            error = str(e)
    labels, error = D.broadcast_object((labels, error))
    if error is not None:
        raise ClipforgeError(error)
    return labels
