"""MCL clustering (k-means, stage labels, accumulation, label files) and the MCL stage runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import embed_texts
from clipforge.models import io
from clipforge.models.registry import build
from clipforge.moe import mcl
from clipforge.moe.clusters import ClusterLabels, accumulate, embed_dataset, kmeans, nmi, stage_labels

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


class ColourSquares(ImageTextDataset):
    """`n` flat-colour 32 px images with captions naming the colour (two captions each)."""

    name = "colour-squares"

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        names = list(COLOURS)
        self.items = []
        for i in range(n):
            c = names[i % len(names)]
            rgb = tuple(int(np.clip(v + g.integers(-25, 26), 0, 255)) for v in COLOURS[c])
            self.items.append((rgb, [f"a {c} square", f"a picture of something {c}"], i % len(names)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        rgb, caps, label = self.items[i]
        return Sample(Image.new("RGB", (32, 32), rgb), caps, label)


def _blobs(n: int = 300, k: int = 3, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    centres = g.standard_normal((k, d)) * 4
    truth = np.arange(n) % k
    x = centres[truth] + g.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_kmeans_deterministic_and_correct():
    x, truth = _blobs()
    a = kmeans(x, 3, seed=7)
    assert a.dtype == np.int64 and a.shape == (300,)
    assert np.array_equal(a, kmeans(x, 3, seed=7))
    assert np.array_equal(a, kmeans(x, 3, seed=7, threads=1))  # thread count does not matter
    assert nmi(a, truth) == pytest.approx(1.0)
    assert np.array_equal(kmeans(x, 3, seed=7, spherical=False, init="random"),
                          kmeans(x, 3, seed=7, spherical=False, init="random"))
    with pytest.raises(ClipforgeError, match="cannot make 5 clusters from 4 points"):
        kmeans(x[:4], 5)


def test_stage_labels_combine_image_and_text_clusters():
    u, _ = _blobs(seed=1)
    w, _ = _blobs(seed=2, k=2)
    y = stage_labels(u, w, k_img=3, k_txt=2, seed=4)
    assert y.min() >= 0 and y.max() < 6
    assert np.array_equal(y, 3 * kmeans(w, 2, seed=5) + kmeans(u, 3, seed=4))


def test_accumulate_is_the_tuple():
    g = np.random.default_rng(0)
    rounds = [g.integers(0, 4, size=200) for _ in range(3)]
    acc = None
    for y in rounds:
        acc = accumulate(acc, y, 4)
    tuples = np.stack(rounds, 1)
    # Same id iff same tuple; ids consecutive and ordered like the base-4 numbers the tuples spell.
    codes = tuples @ np.array([16, 4, 1])
    assert np.array_equal(np.unique(codes, return_inverse=True)[1].reshape(-1), acc)
    assert set(acc.tolist()) == set(range(acc.max() + 1))
    with pytest.raises(ClipforgeError, match=r"\[0, 3\)"):
        accumulate(None, np.array([0, 3]), 3)


def test_cluster_labels_round_trip(tmp_path):
    g = np.random.default_rng(1)
    attr = g.integers(0, 3, size=120)
    y0 = (attr * 3 + g.integers(0, 2, size=120)) % 9
    labels = ClusterLabels.extend(None, y0, 3, 3, seed=1)
    assert labels.stage == 1 and np.all(labels.parents == 0)
    labels = ClusterLabels.extend(labels, g.integers(0, 9, size=120), 3, 3, seed=2)
    assert labels.stage == 2 and labels.stage_labels.shape == (2, 120)
    tup = labels.tuples()
    assert np.array_equal(tup[labels.ids], labels.stage_labels.T)
    prev = accumulate(None, y0, 9)
    assert np.array_equal(labels.parents[labels.ids], prev)  # a cluster's parent is its round-1 cluster

    npz, js = labels.save(tmp_path, attributes={"attr": attr}, extra={"note": "x"})
    assert npz.name == "labels_stage2.npz" and js.name == "clusters_stage2.json"
    back = ClusterLabels.load(tmp_path)
    for f in ("ids", "stage_labels", "parents"):
        assert np.array_equal(getattr(back, f), getattr(labels, f))
    assert (back.k_img, back.k_txt, back.seeds) == ([3, 3], [3, 3], [1, 2])
    info = json.loads(js.read_text())
    assert sum(info["sizes"]) == 120 and sum(info["share"]) == pytest.approx(1.0, abs=1e-4)
    assert info["num_clusters"] == labels.num_clusters and info["note"] == "x"
    assert 0 < info["nmi"]["attr"]["accumulated"] <= 1
    with pytest.raises(ClipforgeError, match="no such labels file"):
        ClusterLabels.load(tmp_path, stage=5)


def test_embed_dataset_uses_first_caption(tmp_path):
    model = build("tiny")
    ds = ColourSquares(12)
    u, w = embed_dataset(model, ds, batch_size=5)
    assert u.shape == (12, 32) and w.shape == (12, 32) and u.dtype == np.float16  # held in fp16
    assert np.allclose(np.linalg.norm(u.astype(np.float32), axis=1), 1, atol=2e-3)
    first = embed_texts(model, [ds[i].captions[0] for i in range(12)]).numpy()
    assert np.array_equal(w, first.astype(np.float16))
    _, w_mean = embed_dataset(model, ds, caption="mean")
    assert np.allclose(np.linalg.norm(w_mean.astype(np.float32), axis=1), 1, atol=2e-3)
    assert not np.allclose(w_mean, w)
    # Above the spill threshold the same values live in a memory-mapped file.
    u2, w2 = embed_dataset(model, ds, batch_size=5, spill_bytes=0, spill_dir=tmp_path)
    assert isinstance(u2, np.memmap) and isinstance(w2, np.memmap)
    assert np.array_equal(u2, u) and np.array_equal(w2, w)
    assert np.array_equal(kmeans(u2, 2, seed=3), kmeans(u, 2, seed=3))


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_run_stages_ffn_only_and_resumable(tmp_path, monkeypatch):
    base_dir = io.save(build("tiny", seed=0), tmp_path / "base")
    ds = ColourSquares(64)
    cfg = mcl.MCLConfig(num_experts=3, k_img=2, k_txt=2,
                        schedule=mcl.paper_schedule(steps=3, batch_size=16, lr=1e-3, warmup=0, log_every=1, seed=0))
    out = tmp_path / "mcl"
    dirs = mcl.run_stages(base_dir, ds, cfg, out, progress=False,
                          attributes={"colour": np.array([s[2] for s in ds.items])})
    assert dirs == [base_dir, out / "stage1" / "model", out / "stage2" / "model"]
    base = _weights(base_dir)
    for j in (1, 2):
        sd = out / f"stage{j}"
        assert (sd / f"labels_stage{j}.npz").is_file() and (sd / f"clusters_stage{j}.json").is_file()
        w = _weights(sd / "model")
        changed = {k for k in base if not torch.equal(base[k], w[k])}
        assert changed - {"logit_scale"} and all(".mlp.fc" in k for k in changed - {"logit_scale"})
        assert w["logit_scale"].item() == pytest.approx(np.log(100.0))
        prov = io.read_provenance(sd / "model")
        assert prov["stage"] == j and prov["policy"] == "keep_remainder" and prov["k_img"] == 2
    labels2 = ClusterLabels.load(out / "stage2")
    assert labels2.stage == 2 and labels2.num_samples == 64
    manifest = json.loads((out / "mcl.json").read_text())
    assert [s["skipped"] for s in manifest["stages"]] == [False, False]

    # Rerun: both stages finished with the same settings, so nothing trains.
    stage2 = _weights(out / "stage2" / "model")

    def no_train(*a, **k):
        raise AssertionError("a finished stage was trained again")

    with monkeypatch.context() as m:
        m.setattr(mcl, "train", no_train)
        assert mcl.run_stages(base_dir, ds, cfg, out, progress=False) == dirs

    # An interrupted stage 2 (claimed, labels saved, model not written) resumes to the same weights.
    import shutil
    for d in (out, out / "stage2"):
        claim = json.loads((d / "settings.json").read_text())
        (d / "settings.json").write_text(json.dumps({**claim, "status": "running"}))
    shutil.rmtree(out / "stage2" / "model")
    assert not (out / "stage2" / "train" / "checkpoints").exists()  # a finished stage keeps its model only
    mcl.run_stages(base_dir, ds, cfg, out, progress=False)
    again = _weights(out / "stage2" / "model")
    assert all(torch.equal(stage2[k], again[k]) for k in stage2)

    with pytest.raises(ClipforgeError, match="config.k_img"):
        mcl.run_stages(base_dir, ds, mcl.MCLConfig(**{**cfg.__dict__, "k_img": 3}), out, progress=False)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the clusters: every cluster of `a` is exactly one cluster of `b`."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_torch_kmeans_finds_faiss_partition_on_the_fixture():
    """faiss is optional: without it `kmeans` runs the same algorithm in torch. The fixture holds faiss's labels
    (k-means++, spherical, seed 0) of 1,200 points around 6 centres (faiss found the 6 true groups), made once
    with faiss-cpu 1.x."""
    fixture = np.load(Path(__file__).parent / "fixtures" / "kmeans_faiss.npz")
    x, faiss_labels, k = fixture["x"], fixture["labels"], int(fixture["k"])
    for seed in (0, 1, 2):
        labels = kmeans(x, k, seed=seed, backend="torch")
        assert labels.dtype == np.int64 and _same_partition(labels, faiss_labels), seed
    assert np.array_equal(kmeans(x, k, seed=3, backend="torch"), kmeans(x, k, seed=3, backend="torch"))
    sub = kmeans(x, k, seed=0, backend="torch", max_points=50)  # trained on 300 points, every point assigned
    assert sub.shape == faiss_labels.shape and len(set(sub.tolist())) == k
    with pytest.raises(ClipforgeError, match="backend"):
        kmeans(x, k, backend="sklearn")


def test_auto_backend_is_faiss_when_installed_else_torch(monkeypatch):
    fixture = np.load(Path(__file__).parent / "fixtures" / "kmeans_faiss.npz")
    x, k = fixture["x"], int(fixture["k"])
    import clipforge.moe.clusters as clusters

    monkeypatch.setattr(clusters, "_faiss", lambda: None)  # a venv without faiss
    assert np.array_equal(kmeans(x, k, seed=0), kmeans(x, k, seed=0, backend="torch"))
    with pytest.raises(ClipforgeError, match="not installed"):
        kmeans(x, k, backend="faiss")
