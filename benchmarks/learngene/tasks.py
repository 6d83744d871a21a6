"""Downstream tasks of the benchmark, one per family kind, plus the pre-training curve metric.

(a) CLIP members: contrastive fine-tuning on scenes (train split, a pool the pre-training never saw) for
    F steps, then retrieval R@1/5/10 in both directions on held-out test scenes (every test scene holds
    a shape-colour combination absent from all training scenes).
(b) vision-only members: `finetune_classifier` (tower + linear head, end to end) on Fashion-MNIST and on
    MNIST; test top-1.
(c) text-only members: object counting from the caption: a linear probe (logistic regression, weight
    decay picked on a held-out fifth) on frozen, standardised text features predicts how many objects a
    scene holds (1-5) from its full caption ("three red stars and a heart" → 4), on captions whose every
    token the ancestry trained (`data.text_task`); train-split captions to fit, test-split to score. It
    needs number words, plurals and lists read together, which no single token gives away.

The curve score (`CurveEval`) measures a one-tower member beside the ancestry's other tower, as it is
pre-trained (`clipforge.learngene.quality.paired_clip`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from clipforge.data.collate import Collator
from clipforge.eval.probes import finetune_classifier, text_linear_probe
from clipforge.eval.tasks import retrieval
from clipforge.models.preprocess import transform_for
from clipforge.train.loop import TrainConfig, train

from .budget import Budget

WEIGHT_DECAYS = (1e-2, 1e-3, 1e-4)


def clip_retrieval(model: nn.Module, ft_data: Any, test_data: Any, budget: Budget, seed: int,
                   run_dir: Path) -> dict[str, float]:
    """(a): fine-tune a copy contrastively for F steps, then held-out retrieval."""
    model = copy.deepcopy(model)
    steps = budget.ft_clip_steps
    cfg = TrainConfig(steps=steps, batch_size=budget.batch_size, lr=budget.ft_clip_lr, weight_decay=0.05,
                      warmup=max(1, steps // 10), seed=seed, log_every=max(1, steps // 5), save_every=0)
    collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)
    train(model, ft_data, cfg, run_dir, collate_fn=collate, progress=False)
    model.cpu().eval()
    r = retrieval(model, test_data)
    out = {f"i2t_r{k}": r[f"text_retrieval_recall@{k}"] for k in (1, 5, 10)}
    out.update({f"t2i_r{k}": r[f"image_retrieval_recall@{k}"] for k in (1, 5, 10)})
    out["mean_r1"] = (out["i2t_r1"] + out["t2i_r1"]) / 2
    return out


def vision_classification(model: nn.Module, train_ds: Any, test_ds: Any, budget: Budget, seed: int) -> dict[str, float]:
    """(b): fine-tune the vision-only descendant with a linear head; test top-1."""
    r = finetune_classifier(model, train_ds, test_ds, steps=budget.ft_vision_steps, lr=budget.ft_vision_lr,
                            batch_size=budget.ft_vision_batch, seed=seed)
    return {"acc1": r["acc1"], "mean_per_class_recall": r["mean_per_class_recall"]}


def text_counting(model: nn.Module, train: dict[str, Any], test: dict[str, Any], seed: int) -> dict[str, float]:
    """(c): linear probe on frozen text features: scene object count (5 classes) from its caption."""
    r = text_linear_probe(model, (train["texts"], train["labels"]), (test["texts"], test["labels"]),
                          weight_decays=WEIGHT_DECAYS, seed=seed)
    return {"acc1": r["acc1"], "mean_per_class_recall": r["mean_per_class_recall"], "weight_decay": r["weight_decay"]}


SCORE = "score"  # the curve score: mean of held-out retrieval R@1 (both ways) and Fashion-MNIST zero-shot


class CurveEval:
    """`eval_fn(model, step)`: `clipforge.learngene.Quality` on fixed held-out data, plus the curve score."""

    def __init__(self, scenes: Any, fashion: Any, partner: nn.Module | None = None) -> None:
        from clipforge.learngene import Quality

        self.quality = Quality(scenes, fashion, partner=partner)

    def __call__(self, model: nn.Module, step: int = 0) -> dict[str, float]:
        from clipforge.learngene.quality import MEAN_R1

        q = self.quality(model, step)
        return {**q, SCORE: (q[MEAN_R1] + q["zeroshot_acc1"]) / 2}

    def describe(self) -> dict[str, Any]:
        return self.quality.describe()
