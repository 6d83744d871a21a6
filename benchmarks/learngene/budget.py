"""The benchmark's budgets: every size, rule and compute point, in one record written beside the results.

Compute is matched in FLOPs, not steps (README beside run.py): PT-FT pre-trains each depth until its
plateau rule fires (or `ptft_max_steps`); the sum of those FLOPs is the family cost C. Every other method
gets a family budget F = C / `ratio` (the paper's operating point) and, for `methods_at_c`, F = C. A
learngene method spends part of F on one extraction (at most `extract_share` of C / `ratio`, ended
earlier by the plateau rule); the rest of F, and all of it for the others, is split over the depths in
PT-FT's proportions, and each run gets as many steps as its FLOPs per step allow (a distilled run pays
for the teacher's forward too). `quick` is a smoke test for CI (tiny ancestry, one seed, minutes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Sizes, rules and compute points of the benchmark (all recorded in results.json)."""

    depths: tuple[int, ...] = (2, 4, 6)  # a quarter, half and three quarters of the ancestry's 8 blocks
    seeds: tuple[int, ...] = (0, 1, 2)  # downstream fine-tuning seeds
    batch_size: int = 64  # every pre-training run, extraction included
    lr: float = 5e-4  # contrastive pre-training (PT-FT, Scratch, FD); warm-up 10 %, cosine
    kd_lr: float = 2e-4  # SWS's recipe for ancestry-initialised runs: a lower lr, no warm-up, KD
    # PT-FT: to a plateau of the curve score (mean of held-out retrieval R@1 and Fashion-MNIST zero-shot)
    ptft_max_steps: int = 800
    eval_every: int = 100  # PT-FT and extraction measured every this many steps
    plateau_patience: int = 2
    plateau_delta: float = 0.005
    ratio: float = 2.8  # F = C / ratio: the paper's operating point
    methods_at_c: tuple[str, ...] = ("mmlg", "tinyclip", "weight_selection")  # also run at F = C
    # extraction: one per learngene method, the recipe chosen from `recipes` by the Aux-Net's quality
    extract_share: float = 0.5  # at most this share of C / ratio
    aux_depth: int = 4
    recipes: tuple[str, ...] = ("kd", "kd+feature", "kd+infonce-tied", "kd+feature+depths", "kd+stages4")
    curve_points: int = 3  # quality measured this many times along every other pre-training run
    # data
    pt_scenes: int = 6000  # the ancestry's own stream (alt captions, train split, seed 0) ...
    pt_fashion: int = 6000  # ... plus the first Fashion-MNIST train images (prompt captions)
    curve_scenes: int = 300  # quality: held-out test scenes (full captions), retrieval ...
    curve_fashion: int = 500  # ... and Fashion-MNIST zero-shot
    # downstream tasks, as in the first protocol
    ft_clip_steps: int = 40
    ft_clip_lr: float = 2e-4
    ft_scenes: int = 2000
    eval_scenes: int = 500
    ft_vision_steps: int = 50
    ft_vision_lr: float = 1e-4
    ft_vision_batch: int = 32
    ft_vision_train: int = 5000
    eval_classify: int = 1000
    text_train: int = 2000
    text_test: int = 1000
    heur_k: int = 3
    fd_beta: float = 1.0  # feature distillation (CLIP-KD's FD): InfoNCE + beta * MSE of the embeddings

    @classmethod
    def quick(cls) -> Budget:
        """A smoke test: the tiny 2-layer ancestry, depths 1 and 2, one seed, a handful of steps."""
        return cls(depths=(1, 2), seeds=(0,), batch_size=16, ptft_max_steps=8, eval_every=4, aux_depth=2,
                   recipes=("kd+feature+depths", "kd+stages4"), curve_points=2, pt_scenes=128, pt_fashion=128,
                   curve_scenes=32, curve_fashion=32, ft_clip_steps=3, ft_scenes=48, eval_scenes=32,
                   ft_vision_steps=3, ft_vision_batch=16, ft_vision_train=64, eval_classify=32, text_train=64,
                   text_test=32, heur_k=1, methods_at_c=("mmlg",))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
