"""The benchmark's budgets: every step count and data size, in one record written beside the results.

The full budget is sized for ≤ 60 minutes on 2 CPU cores (measured step times on the demo ancestry's
width-128 blocks at batch 64: about 0.3 s at depth 2, 0.37 s at depth 4, 0.45 s at depth 6, data
included); `quick` is a smoke test for CI (≤ 5 minutes, tiny ancestry, depths 1 and 2, one seed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Steps and sizes. E = extract_steps, P = ptft_steps, p = short_steps, F / V = fine-tuning steps."""

    depths: tuple[int, ...] = (2, 4, 6)  # a quarter, half and three quarters of the ancestry's 8 blocks
    seeds: tuple[int, ...] = (0, 1, 2)  # downstream fine-tuning seeds
    batch_size: int = 64  # every pre-training run (extraction included)
    lr: float = 5e-4  # every pre-training run; warm-up 10 %, cosine to 0
    aux_depth: int = 4  # Aux-Net depth of both towers during extraction
    extract_steps: int = 300  # E: one extraction per learngene method, shared by all depths
    ptft_steps: int = 400  # P: PT-FT's full contrastive pre-training, per depth
    short_steps: int = 50  # p: short pre-training of every other descendant, per depth
    curve_evals: int = 8  # PT-FT evaluated every P / 8 steps; short runs every p / 2
    pt_scenes: int = 6000  # pre-training data: scenes (train split, seed 0) ...
    pt_fashion: int = 6000  # ... plus the first Fashion-MNIST train images (prompt captions)
    ft_clip_steps: int = 50  # F: contrastive fine-tuning of CLIP descendants on scenes
    ft_clip_lr: float = 2e-4
    ft_scenes: int = 2000  # fine-tuning scenes (train split, seed 1: not the pre-training scenes)
    eval_scenes: int = 500  # held-out retrieval scenes (test split: unseen shape-colour combinations)
    ft_vision_steps: int = 60  # V: `finetune_classifier` steps on each of Fashion-MNIST and MNIST
    ft_vision_lr: float = 1e-4
    ft_vision_batch: int = 32
    ft_vision_train: int = 5000  # training images per classification task (MNIST has 4,000)
    eval_classify: int = 1000  # test images per classification task
    text_train: int = 2000  # text task: captions of train scenes (seed 2 + seed) ...
    text_test: int = 1000  # ... and of test scenes
    curve_scenes: int = 300  # pre-training curve: held-out scenes retrieval ...
    curve_fashion: int = 500  # ... and Fashion-MNIST zero-shot
    heur_k: int = 3  # Heur-LG / Auto-LG inherit k blocks per tower (3 in the group's ViT version)

    @classmethod
    def quick(cls) -> "Budget":
        """A smoke test: the tiny 2-layer ancestry, depths 1 and 2, one seed, a handful of steps."""
        return cls(depths=(1, 2), seeds=(0,), batch_size=16, aux_depth=2, extract_steps=6, ptft_steps=8,
                   short_steps=4, curve_evals=2, pt_scenes=128, pt_fashion=128, ft_clip_steps=4, ft_scenes=64,
                   eval_scenes=48, ft_vision_steps=4, ft_vision_batch=16, ft_vision_train=128, eval_classify=64,
                   text_train=128, text_test=64, curve_scenes=32, curve_fashion=64, heur_k=1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
