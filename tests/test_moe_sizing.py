"""DMU's sizing rules (`clipforge.moe.sizing`): clusters per stage, one epoch per stage and per router phase,
the baselines' data- and compute-matched steps; one cluster per stage ("w/o MCL"); the base's logit scale."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.errors import ClipforgeError
from clipforge.models import io
from clipforge.models.registry import build
from clipforge.moe import mcl
from clipforge.moe.baselines import FinetuneConfig, without_mcl_config
from clipforge.moe.cluster_sampler import ClusterBatchSampler
from clipforge.moe.clusters import ClusterLabels
from clipforge.moe.dmu import DMUConfig
from clipforge.moe.routers import RouterConfig
from clipforge.moe.sizing import (
    cluster_grid,
    clusters_per_stage,
    compute_matched_steps,
    data_matched_steps,
    epoch_steps,
    size_clusters,
)
from clipforge.train.optim import param_groups


def test_clusters_per_stage_holds_about_two_batches_per_last_stage_cluster():
    # the released run: 1.2M pairs, batch 800, 3 stages -> round(750^(1/3)) = 9 = 3 x 3
    assert clusters_per_stage(1_200_000, 800, 3) == 9 and cluster_grid(9) == (3, 3)
    s = size_clusters(4096, 32, 3)
    assert (s.clusters, s.k_img, s.k_txt, s.accumulated) == (4, 2, 2, 64)
    assert s.samples_per_cluster == 64 and s.batches_per_cluster == 2.0
    assert clusters_per_stage(16_000, 64, 3) == 5 and cluster_grid(5) == (5, 1)  # a prime: images only
    assert clusters_per_stage(8192, 64, 3, target_batches=1.0) == 5  # (128)^(1/3) = 5.04
    assert cluster_grid(12) == (4, 3) and cluster_grid(1) == (1, 1)
    assert clusters_per_stage(100, 64, 3) == 1  # a pool under two batches: one cluster, at least 1


@pytest.mark.parametrize("args", [(0, 32, 3), (4096, 0, 3), (4096, 32, 0), (4096, 32, 3, 0.0)])
def test_cluster_sizing_refuses_nonsense_in_one_line(args):
    with pytest.raises(ClipforgeError) as e:
        clusters_per_stage(*args)
    assert "\n" not in str(e.value)
    with pytest.raises(ClipforgeError):
        cluster_grid(0)


def test_data_and_compute_matched_steps():
    assert epoch_steps(70, 16) == 4 and epoch_steps(10, 16) == 1  # drop-last; the batch clamped to the pool
    assert data_matched_steps(4096, 32) == 128  # S: one expert's stage of data
    assert compute_matched_steps(4096, 32, 4) == 3 * 128 + 128  # T = 3S + R, R one router epoch
    assert compute_matched_steps(3840, 64, 4, router_steps=30) == 210  # the v1 benchmark's T
    with pytest.raises(ClipforgeError):
        compute_matched_steps(4096, 32, 1)


def test_router_and_finetune_steps_none_mean_one_epoch_of_the_pool():
    r = RouterConfig(schedule=mcl.paper_schedule(steps=None, batch_size=16, lr=1e-3))
    assert r.train_config(70).steps == epoch_steps(70, 16) == 4
    f = FinetuneConfig(schedule=mcl.paper_schedule(steps=None, batch_size=16, lr=1e-3))
    assert f.train_config(70).steps == data_matched_steps(70, 16)


def test_stage_steps_none_is_one_cluster_sampler_epoch():
    ids = np.repeat([0, 1, 2], [20, 12, 33])  # batches of 16: 16+4, 12, 16+16+1 (the 1 is too small to keep)
    labels = ClusterLabels.extend(None, ids, 3, 1, seed=0)
    cfg = mcl.MCLConfig(k_img=3, k_txt=1, schedule=mcl.paper_schedule(steps=None, batch_size=16, lr=1e-3))
    sched = mcl.resolve_schedule(cfg, labels, len(ids), 1)
    assert sched["steps"] == sched["epoch_batches"] == len(ClusterBatchSampler(ids, 16)) == 5


class Squares(ImageTextDataset):
    """`n` flat-colour 32 px images, two colours, counting how often each item is read."""

    name = "counted-squares"

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, Counter()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        self.reads[i] += 1
        c = (200, 30, 30) if i % 2 else (30, 30, 200)
        return Sample(Image.new("RGB", (32, 32), c), [f"a {'red' if i % 2 else 'blue'} square {i % 5}"], None)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    model = build("tiny", seed=0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(14.8))  # what the demo ancestry learned
    return io.save(model, tmp_path_factory.mktemp("sizing") / "base")


def test_one_cluster_stage_trains_one_epoch_without_embedding_at_the_base_logit_scale(base_dir, tmp_path,
                                                                                        monkeypatch):
    """k = 1: no embedding pass, every label 0; steps None: every sample read exactly once in training;
    `fixed_logit_scale=base_logit_scale(base)` keeps the base's temperature (frozen)."""
    scale = mcl.base_logit_scale(base_dir)
    assert scale == pytest.approx(14.8, rel=1e-5)
    ds = Squares(48)
    base_cfg = DMUConfig(mcl=mcl.MCLConfig(num_experts=2, k_img=2, k_txt=2, schedule=mcl.paper_schedule(
        steps=None, batch_size=16, lr=1e-3, warmup=0, log_every=1, fixed_logit_scale=scale)))
    cfg = without_mcl_config(base_cfg).mcl
    assert (cfg.k_img, cfg.k_txt) == (1, 1) and cfg.schedule == base_cfg.mcl.schedule

    def no_embedding(*a, **k):
        raise AssertionError("one cluster per stage needs no embedding pass")

    monkeypatch.setattr(mcl, "labels_for_stage", no_embedding)
    _, labels = mcl.run_stage(base_dir, None, ds, None, 1, cfg, tmp_path / "mcl", progress=False)
    assert labels.num_clusters == 1 and not labels.ids.any()
    assert sorted(ds.reads) == list(range(48)) and set(ds.reads.values()) == {1}  # one epoch: each sample once
    prov = io.read_provenance(tmp_path / "mcl" / "stage1" / "model")
    assert prov["schedule"]["steps"] == epoch_steps(48, 16) == 3
    stage = io.load(tmp_path / "mcl" / "stage1" / "model")
    assert stage.logit_scale.exp().item() == pytest.approx(scale, rel=1e-5)


def test_base_logit_scale_is_clamped_to_what_the_loop_accepts():
    model = build("tiny", seed=0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    assert mcl.base_logit_scale(model) == 100.0


def test_diagnostic_parameter_sets_train_what_they_name():
    model = build("tiny", seed=0)

    def names(params: str) -> set[str]:
        groups = param_groups(model, FinetuneConfig(params=params).trainable())
        return {n for g in groups for n in g["param_names"]}

    text_emb = {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"}
    ffn = names("ffn")
    assert ffn and all(".mlp.fc" in n for n in ffn)
    assert names("text_embeddings") == text_emb and names("ffn+text_embeddings") == ffn | text_emb
    assert names("full") == {n for n, _ in model.named_parameters()}
    with pytest.raises(ClipforgeError, match="params must be one of"):
        FinetuneConfig(params="embeddings")


def test_epoch_recipe_sizes_clusters_epochs_and_keeps_the_base_temperature(base_dir):
    """`moe.recipe.epoch_recipe`: the v2 benchmark's DMU at any pool: clusters from `size_clusters`, stages and
    routers of one epoch (steps None), a tenth-of-an-epoch warm-up, the base's logit scale unless told not."""
    from clipforge.moe.recipe import epoch_recipe, total_steps

    cfg = epoch_recipe(base_dir, 4096, 32)
    assert (cfg.mcl.k_img, cfg.mcl.k_txt, cfg.mcl.num_experts, cfg.top_k) == (2, 2, 4, 2)
    assert cfg.mcl.schedule.steps is None and cfg.router.schedule.steps is None
    assert cfg.mcl.schedule.warmup == cfg.router.schedule.warmup == 12  # 128 // 10
    assert cfg.mcl.schedule.fixed_logit_scale == pytest.approx(14.8, rel=1e-5)
    assert cfg.router.schedule.fixed_logit_scale == pytest.approx(14.8, rel=1e-5)
    assert total_steps(cfg, 4096) == compute_matched_steps(4096, 32, 4) == 512
    released = epoch_recipe(base_dir, 48_000, 32, experts=3, base_scale=False)
    assert released.mcl.schedule.fixed_logit_scale == 100.0
    assert released.mcl.k_img * released.mcl.k_txt == clusters_per_stage(48_000, 32, 2) == 27
