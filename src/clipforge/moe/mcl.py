"""MCL expert extraction: N−1 stages of FFN-only fine-tuning on cluster-pure batches (docs/methods.md A.1).

Stage j (1..N−1) embeds the training set with the stage-(j−1) model (stage 0 = the base), clusters
both modalities, accumulates the labels, and fine-tunes a dense model whose every global batch comes
from one accumulated cluster. Its FFNs become expert j of the CLIP-MoE; expert 0 is the base FFN.

On disk (`out_dir`):

    stage{j}/settings.json               the settings that shape stage j (the run-directory protocol,
                                         `clipforge.train.runs`: checked on a rerun)
    stage{j}/labels_stage{j}.npz         accumulated labels stage j trains on (+ clusters_stage{j}.json)
    stage{j}/train/                      log.jsonl and checkpoints/ of the training run
    stage{j}/model/                      the stage model (written last: its presence means "done")
    mcl.json                             the manifest: config, expert model dirs, per-stage summaries

`run_stages` is resumable: a finished stage whose recorded settings match is skipped, one in
progress reuses its labels and resumes from its latest checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .. import distributed as D
from ..data.base import identity
from ..errors import ClipforgeError
from ..files import write_json
from ..models import io
from ..run import Run, is_finished
from ..schedule import Schedule, schedule
from ..train.checkpoint import CHECKPOINT_DIR, latest_checkpoint
from ..train.loop import train
from .cluster_sampler import (
    POLICIES,
    cluster_sampler_factory,
    plan_batches,
    policy_report,
)
from .clusters import ClusterLabels, labels_for_stage

log = logging.getLogger("clipforge.moe")
STAGE_KIND = "moe stage"

FFN_PATTERNS = ["*.mlp.fc1.*", "*.mlp.fc2.*"]
ATTENTION_PATTERNS = ["*.self_attn.*"]
# Settings that change how a stage runs but not what it computes: a rerun may change them freely.
_RESULT_NEUTRAL = {"num_experts", "save_every", "keep_checkpoints", "embed_batch_size"}
_SCHEDULE_NEUTRAL = {"num_workers", "log_every", "grad_checkpointing"}
# The released recipe's schedule [C], shared by MCL stages, router training and the fine-tuning baselines
# (each sets its own lr and weight decay).
PAPER_SCHEDULE = {"steps": None, "batch_size": 800, "warmup": 200, "max_warmup_frac": 0.2,
                  "label_smoothing": 0.1, "fixed_logit_scale": 100.0,
                  "betas": (0.9, 0.999), "eps": 1e-8, "grad_clip": None, "decay_exclusions": False}
# clipforge's optimiser choices (docs/methods.md A.1), for presets that use them instead of the released ones.
CLIPFORGE_OPTIMIZER = {"betas": (0.9, 0.98), "eps": 1e-6, "grad_clip": 1.0, "decay_exclusions": True}


def paper_schedule(**changes: Any) -> Schedule:
    """The released recipe's schedule with `changes` (lr, steps, batch_size...)."""
    return Schedule(**{**PAPER_SCHEDULE, **changes})


@dataclass
class MCLConfig:
    """MCL stage settings; defaults are the released code's [C] unless marked as our choice.

    `schedule` (clipforge.schedule): `steps` per stage (None: exactly one epoch of the cluster sampler,
    every kept sample once; `moe.sizing` for the baselines' matching steps); `fixed_logit_scale` 100 as
    released, or the base's learned value (`base_logit_scale`);
    `batch_size` is global, clamped to the dataset size (and to a multiple of the world size); the
    warm-up is clamped to at most `max_warmup_frac` of the steps [choice]: a short run would otherwise
    never leave warm-up, while the released ~1,500-step stage (1.2M pairs / 800) keeps its 200 steps.
    `init`: "base" (every stage starts from the base weights [C]) or "previous". Stage j clusters and
    samples with seed `schedule.seed + j`. `k_img = k_txt = 1` is one cluster per stage (no embedding
    pass): plain FFN fine-tuning on shuffled batches through the same pipeline, the "w/o MCL" control.
    `moe.sizing.size_clusters` picks k_img × k_txt for a pool and batch.
    """

    num_experts: int = 4
    k_img: int = 3
    k_txt: int = 3
    schedule: Schedule = schedule(**PAPER_SCHEDULE, lr=1e-5, weight_decay=0.2)
    train_attention: bool = False
    init: str = "base"
    policy: str = "keep_remainder"
    cluster_order: str = "fixed"  # [C] clusters visited 0..C−1 each round; "shuffled" [choice] reshuffles
    min_cluster_size: int | None = None
    min_batch: int = 2
    # clustering [choice: faiss, spherical, k-means++ init like the released sklearn call]
    spherical: bool = True
    kmeans_niter: int = 50
    kmeans_nredo: int = 1
    kmeans_init: str = "kmeans++"
    kmeans_max_points: int | None = None
    caption: str = "first"
    embed_batch_size: int = 256
    # training mechanics beyond the schedule
    save_every: int | None = None  # None: by wall time only (TrainConfig.save_every_s)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.num_experts < 2:
            raise ClipforgeError(f"num_experts must be at least 2 (the base plus one stage), got {self.num_experts}")
        if self.init not in ("base", "previous"):
            raise ClipforgeError(f"init must be 'base' or 'previous', got {self.init!r}")
        if self.policy not in POLICIES:
            raise ClipforgeError(f"unknown cluster policy {self.policy!r}; choose {', '.join(POLICIES)}")
        if self.k_img < 1 or self.k_txt < 1:
            raise ClipforgeError(f"k_img and k_txt must be positive, got {self.k_img}, {self.k_txt}")

    def trainable(self) -> list[str]:
        """Parameter patterns the stage trains: the FFNs of both towers (+ attention if asked)."""
        return FFN_PATTERNS + (ATTENTION_PATTERNS if self.train_attention else [])

    def kmeans_kwargs(self) -> dict[str, Any]:
        return {"niter": self.kmeans_niter, "nredo": self.kmeans_nredo, "spherical": self.spherical,
                "init": self.kmeans_init, "max_points": self.kmeans_max_points}

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a stage's labels and weights."""
        d = {k: v for k, v in asdict(self).items() if k not in _RESULT_NEUTRAL}
        d["schedule"] = {k: v for k, v in d["schedule"].items() if k not in _SCHEDULE_NEUTRAL}
        return d


def _as_model(model_or_dir: nn.Module | str | os.PathLike) -> nn.Module:
    return model_or_dir if isinstance(model_or_dir, nn.Module) else io.load(model_or_dir)


def _identity(model_or_dir: nn.Module | str | os.PathLike) -> str:
    if isinstance(model_or_dir, nn.Module):
        return f"in-memory {type(model_or_dir).__name__}"
    return str(Path(model_or_dir).resolve())


def _default_collate(model: nn.Module) -> Callable:
    from ..data.collate import Collator
    from ..eval.embed import model_context_length
    from ..models.preprocess import transform_for
    from ..models.tokenizer import tokenizer_for

    return Collator(transform_for(model.config), model_context_length(model), caption="random",
                    tokenizer=tokenizer_for(model))


def _stage_record(cfg: MCLConfig, stage: int, base_id: str, dataset: Any) -> dict[str, Any]:
    return {"stage": stage, "base": base_id, "num_samples": len(dataset),
            "dataset": identity(dataset), "config": cfg.fingerprint()}


def resolve_schedule(cfg: MCLConfig, labels: ClusterLabels, n: int, world_size: int) -> dict[str, int]:
    """Concrete global batch, steps and warm-up of a stage on `n` samples over `world_size` ranks."""
    batch = cfg.schedule.resolved(n, world_size=world_size).batch_size
    if batch < max(world_size, 2):
        raise ClipforgeError(f"a global batch from {n} samples cannot feed {world_size} ranks")
    plan = plan_batches(labels.ids, batch, world_size, cfg.policy, cfg.min_cluster_size, labels.parents, cfg.min_batch)
    epoch = plan.report["kept"]["batches"]
    s = cfg.schedule.resolved(n, epoch_steps=max(1, epoch), world_size=world_size)
    return {"global_batch": s.batch_size, "steps": s.steps, "warmup": s.warmup, "epoch_batches": epoch}


def base_logit_scale(model_or_dir: nn.Module | str | os.PathLike) -> float:
    """exp(logit_scale) the base learned, clamped to the loop's [1, 100]: `schedule.fixed_logit_scale` for
    stages that keep the base's temperature instead of the released 100 (the demo ancestry learned ~15)."""
    model = _as_model(model_or_dir)
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        raise ClipforgeError(f"{type(model).__name__} has no logit_scale to keep")
    return float(min(100.0, max(1.0, math.exp(float(scale.detach().reshape(-1)[0])))))


def _make_labels(prev_model: nn.Module, dataset: Any, labels_so_far: ClusterLabels | None, stage: int,
                 cfg: MCLConfig, device: Any) -> ClusterLabels:
    if cfg.k_img == 1 and cfg.k_txt == 1:
        # One cluster per stage (the "w/o MCL" control): every label is 0, so there is nothing to embed.
        log.info("MCL stage %d: one cluster (k_img = k_txt = 1), no embedding pass", stage)
        return ClusterLabels.extend(labels_so_far, np.zeros(len(dataset), dtype=np.int64), 1, 1,
                                    cfg.schedule.seed + stage)
    log.info("MCL stage %d: embedding %d samples with the stage-%d model", stage, len(dataset), stage - 1)
    prev_model.to(device)
    # Each rank embeds 1/world of the data; rank 0 clusters the gathered embeddings and broadcasts the labels.
    return labels_for_stage(prev_model, dataset, labels_so_far, cfg.k_img, cfg.k_txt, cfg.schedule.seed + stage,
                            batch_size=cfg.embed_batch_size, device=device, caption=cfg.caption,
                            num_workers=cfg.schedule.num_workers, **cfg.kmeans_kwargs())


def run_stage(base: nn.Module | str | os.PathLike, prev_stage_model: nn.Module | None, dataset: Any,
              labels_so_far: ClusterLabels | None, stage_index: int, cfg: MCLConfig, out_dir: str | os.PathLike,
              collate_fn: Callable | None = None, resume: str | None = None,
              attributes: Mapping[str, np.ndarray] | None = None, progress: bool = True
              ) -> tuple[nn.Module, ClusterLabels]:
    """Run MCL stage `stage_index` (≥ 1) and save its model to `out_dir/stage{j}/model`.

    `prev_stage_model`: the stage-(j−1) model (None: the base, right for j = 1); `labels_so_far`: the
    labels stage j−1 trained on (None for j = 1). `resume="latest"` reuses saved labels and resumes
    training from the stage's latest checkpoint. `attributes`: optional per-sample labels whose NMI
    with the clusters goes into `clusters_stage{j}.json`. Returns the stage model and its labels.
    """
    j = int(stage_index)
    if j < 1:
        raise ClipforgeError(f"MCL stages count from 1 (stage 0 is the base), got {j}")
    if (labels_so_far is None) != (j == 1) or (labels_so_far is not None and labels_so_far.stage != j - 1):
        raise ClipforgeError(f"stage {j} needs the labels of stage {j - 1}"
                             f"{'' if labels_so_far is None else f', got those of stage {labels_so_far.stage}'}")
    info = D.init_distributed()
    stage_dir = Path(out_dir) / f"stage{j}"
    record = _stage_record(cfg, j, _identity(base), dataset)
    labels_file = stage_dir / f"labels_stage{j}.npz"
    inputs = [] if isinstance(base, nn.Module) else [base]
    with Run(stage_dir, STAGE_KIND, record, overwrite=resume is None, inputs=inputs) as run:
        if run.done:
            return io.load(stage_dir / "model"), ClusterLabels.load(labels_file)
        base_model = _as_model(base)
        prev = prev_stage_model if prev_stage_model is not None else base_model
        labels, fresh = _stage_labels(run, prev, dataset, labels_so_far, j, cfg, info)
        sched = resolve_schedule(cfg, labels, len(dataset), info.world_size)
        if fresh:
            _save_labels(run, labels, sched, j, cfg, info, attributes)
        model = _train_stage(run, base, base_model, prev, dataset, labels, sched, j, cfg, info, collate_fn, progress)
        run.finish(cleanup=[stage_dir / "train" / CHECKPOINT_DIR])
    return model, labels


def _stage_labels(run: Run, prev: nn.Module, dataset: Any, labels_so_far: ClusterLabels | None, j: int,
                  cfg: MCLConfig, info: Any) -> tuple[ClusterLabels, bool]:
    """Stage j's accumulated labels and whether they are new: reused from an interrupted run, else clustered."""
    labels_file = run.dir / f"labels_stage{j}.npz"
    if run.resumed and labels_file.is_file():
        labels = ClusterLabels.load(labels_file)
        if labels.num_samples != len(dataset) or labels.stage != j:
            raise ClipforgeError(f"{labels_file} does not fit stage {j} on {len(dataset)} samples")
        log.info("MCL stage %d: reusing %s", j, labels_file)
        return labels, False
    return _make_labels(prev, dataset, labels_so_far, j, cfg, info.device), True  # the same on every rank


def _save_labels(run: Run, labels: ClusterLabels, sched: dict[str, int], j: int, cfg: MCLConfig, info: Any,
                 attributes: Mapping[str, np.ndarray] | None) -> None:
    """Rank 0 saves new labels with the small-cluster policy report at the stage's global batch."""
    if info.is_main:
        reports = policy_report(labels.ids, sched["global_batch"], info.world_size, labels.parents,
                                cfg.min_cluster_size, cfg.min_batch)
        labels.save(run.dir, attributes, extra={"embedded_with": f"stage{j - 1}", "policy": cfg.policy,
                                                "policy_report": reports})
    D.barrier()


def _train_stage(run: Run, base: Any, base_model: nn.Module, prev: nn.Module, dataset: Any, labels: ClusterLabels,
                 sched: dict[str, int], j: int, cfg: MCLConfig, info: Any, collate_fn: Callable | None,
                 progress: bool) -> nn.Module:
    """Fine-tune stage j's model on cluster-pure batches (`sched`: `resolve_schedule`'s) into `run.dir/model`."""
    stage_dir = run.dir
    sizes = labels.sizes
    report = plan_batches(labels.ids, sched["global_batch"], info.world_size, cfg.policy, cfg.min_cluster_size,
                          labels.parents, cfg.min_batch).report
    log.info("MCL stage %d: %d clusters (sizes %d..%d, median %.0f); policy %s keeps %.1f%% of samples "
             "(%d dropped) in %d batches/epoch; %d steps, global batch %d, warm-up %d", j, labels.num_clusters,
             sizes.min(), sizes.max(), float(np.median(sizes)), cfg.policy, 100 * report["kept"]["share"],
             report["dropped"]["samples"], report["kept"]["batches"], sched["steps"], sched["global_batch"],
             sched["warmup"])

    source = base_model if cfg.init == "base" else prev
    # Never train a caller's model in place; a base we loaded ourselves and embed with nothing else is ours.
    owned = source is base_model and base_model is not base and base_model is not prev
    model = source if owned else copy.deepcopy(source)
    save_every = cfg.save_every  # None: by wall time (TrainConfig.save_every_s)
    seed = cfg.schedule.seed + j
    tcfg = replace(cfg.schedule, steps=sched["steps"], batch_size=sched["global_batch"], warmup=sched["warmup"],
                   seed=seed).train_config(trainable=cfg.trainable(), save_every=save_every,
                                           keep_checkpoints=cfg.keep_checkpoints)
    factory = cluster_sampler_factory(labels.ids, seed=seed, policy=cfg.policy,
                                      min_cluster_size=cfg.min_cluster_size, parents=labels.parents,
                                      min_batch=cfg.min_batch, order=cfg.cluster_order)
    # Resume only from a checkpoint that exists: "latest" on a fresh stage would just log a warning.
    has_ckpt = latest_checkpoint(stage_dir / "train" / CHECKPOINT_DIR) is not None
    model = train(model, dataset, tcfg, stage_dir / "train", batch_sampler=factory,
                  collate_fn=collate_fn or _default_collate(model), resume="latest" if has_ckpt else None,
                  progress=progress)
    if info.is_main:
        io.save(model, stage_dir / "model", provenance={
            "source": "clipforge.moe.mcl", "name": f"MCL stage {j}", "method": "MCL (CLIP-MoE expert extraction)",
            "base": _identity(base), "stage": j, "init": cfg.init, "k_img": cfg.k_img, "k_txt": cfg.k_txt,
            "seed": seed, "policy": cfg.policy, "trainable": cfg.trainable(),
            "clusters": {"num": labels.num_clusters, "size_min": int(sizes.min()), "size_max": int(sizes.max()),
                         "size_median": float(np.median(sizes))},
            "sampler": {"kept": report["kept"], "dropped": report["dropped"], "merged": report["merged"]},
            "schedule": sched,
            "note": "logit scale fixed (frozen) during the stage" if cfg.schedule.fixed_logit_scale else "",
            "mcl_config": asdict(cfg)})
    D.barrier()
    return model


def run_stages(base: nn.Module | str | os.PathLike, dataset: Any, cfg: MCLConfig, out_dir: str | os.PathLike,
               collate_fn: Callable | None = None, resume: bool = True,
               attributes: Mapping[str, np.ndarray] | None = None, progress: bool = True) -> list[Path]:
    """Run MCL stages 1..N−1; return the model dirs of experts 0..N−1 (expert 0 = the base).

    With `resume` (default), finished stages with matching settings are skipped and a stage in
    progress resumes from its checkpoints; `resume=False` redoes every stage. An in-memory base is
    saved to `out_dir/stage0/model` so the manifest names a directory for every expert.
    """
    out_dir = Path(out_dir)
    info = D.init_distributed()
    base_id = _identity(base)
    settings = {"base": base_id, "num_samples": len(dataset), "num_experts": cfg.num_experts,
                "dataset": identity(dataset), "config": cfg.fingerprint()}
    inputs = [] if isinstance(base, nn.Module) else [base]
    with Run(out_dir, "moe stages", settings, overwrite=not resume, inputs=inputs, artefact="mcl.json") as run:
        if run.done:
            return [Path(d) for d in json.loads((out_dir / "mcl.json").read_text())["experts"]]
        dirs, summaries = _stages(base, dataset, cfg, out_dir, collate_fn, resume, attributes, progress, info)
        if info.is_main:
            write_json(out_dir / "mcl.json", {"base": base_id, "experts": [str(d) for d in dirs],
                                              "config": asdict(cfg), "stages": summaries})
        run.finish()
    return dirs


def _stages(base: Any, dataset: Any, cfg: MCLConfig, out_dir: Path, collate_fn: Callable | None, resume: bool,
            attributes: Mapping[str, np.ndarray] | None, progress: bool, info: Any
            ) -> tuple[list[Path], list[dict[str, Any]]]:
    """Stages 1..N−1 in turn (finished ones skipped); the expert model dirs and per-stage summaries."""
    base_id = _identity(base)
    if isinstance(base, nn.Module):
        base_dir = out_dir / "stage0" / "model"
        if info.is_main:
            io.save(base, base_dir, provenance={"source": "clipforge.moe.mcl", "name": "MCL stage 0 (base)",
                                                "stage": 0})
        D.barrier()
    else:
        base_dir = Path(base)
    dirs, labels, prev_model = [base_dir], None, None
    summaries: list[dict[str, Any]] = []
    for j in range(1, cfg.num_experts):
        stage_dir = out_dir / f"stage{j}"
        record = _stage_record(cfg, j, base_id, dataset)
        done = resume and is_finished(stage_dir, STAGE_KIND, record)
        if done:
            log.info("MCL stage %d/%d: finished earlier, skipping (%s)", j, cfg.num_experts - 1, stage_dir / "model")
            labels = ClusterLabels.load(stage_dir / f"labels_stage{j}.npz")
            prev_model = None  # loaded only if a later stage needs to embed with it
        else:
            log.info("MCL stage %d/%d", j, cfg.num_experts - 1)
            if prev_model is None and j > 1:
                prev_model = io.load(dirs[-1])
            prev_model, labels = run_stage(base, prev_model, dataset, labels, j, cfg, out_dir, collate_fn,
                                           resume="latest" if resume else None, attributes=attributes,
                                           progress=progress)
            prev_model.eval()
        dirs.append(stage_dir / "model")
        summaries.append({"stage": j, "model": str(stage_dir / "model"), "num_clusters": labels.num_clusters,
                          "skipped": bool(done)})
    return dirs, summaries
