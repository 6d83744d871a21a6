"""The benchmark's budgets: every size, rule and compute point, in one record written beside the results.

The width-gap protocol (README beside run.py): a family of `depths` × (CLIP, vision, text) descendants
at `width_fraction` of the ancestry's widths; PT-FT pre-trains each member until its plateau rule fires
(`ptft_max_steps` is only a safety cap, set far past where the rule fired in the sizing probes, and the
record says whether it fired); C is the sum. Every method gets F = C / `ratio` and F = C (`methods_at_c`),
a learngene method's one extraction (`extract_fraction` of the samples the ancestry trained on, at most
`extract_cap` of C / ratio) counted once at each point. `quick` is the smoke test (tiny ancestry, toy
sizes, seconds per unit). The arithmetic behind the defaults is in the README (`sizing.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Sizes, rules and compute points of the benchmark (all recorded in results.json)."""

    depths: tuple[int, ...] = (2, 4, 6)  # a quarter, half and three quarters of the ancestry's 8 blocks
    width_fraction: float = 2 / 3  # of each ancestry tower's width, in whole heads (family.py)
    seeds: tuple[int, ...] = (0, 1, 2)  # downstream fine-tuning seeds, paired across methods
    batch_size: int = 64  # every pre-training run, the extraction included
    lr: float = 5e-4  # contrastive pre-training from random init (PT-FT, Scratch, feature KD); cosine
    kd_lr: float = 2e-4  # SWS's recipe for ancestry-initialised runs: a lower lr, no warm-up
    # PT-FT: to the plateau of the curve score (mean of held-out retrieval R@1 and Fashion-MNIST zero-shot)
    ptft_max_steps: int = 6000  # a safety cap only: the narrow CLIP of depth 2 plateaued at 1,600 (README)
    ptft_warmup: int = 80  # the warm-up PT-FT had at its former 800-step cap, now fixed in steps
    eval_every: int = 100
    plateau_patience: int = 2
    plateau_delta: float = 0.005
    ratio: float = 2.8  # F = C / ratio: the paper's operating point
    methods_at_c: tuple[str, ...] = ("mmlg", "scratch", "weight_selection", "tinyclip", "tleg_per_tower", "auto_lg",
                                     "feature_kd")
    # extraction: one learngene per learngene method, one recipe
    ancestry_samples: int = 204_800  # what the demo ancestry trained on: 800 steps of 256
    extract_fraction: float = 0.3  # of `ancestry_samples`
    extract_cap: float = 0.8  # at most this share of C / ratio
    extract_stages: int = 4  # 1 stage starts at chance (docs/methods.md B.3b); 4 fit the ancestry far better
    aux_depth: int = 4  # trained at every family depth (depth sampled per step)
    extract_evals: int = 4  # the Aux-Net measured this many times along the extraction (no early stop)
    curve_points: int = 2  # quality measured this many times along every budgeted pre-training run
    # data: the ancestry's own stream (its scenes and caption-style mix, then Fashion-MNIST train), a pool of
    pool_scenes: int = 12_000
    pool_fashion: int = 12_000
    curve_scenes: int = 300  # the curve score: held-out test scenes (full captions), retrieval ...
    curve_fashion: int = 500  # ... and Fashion-MNIST zero-shot
    # downstream: one task per kind
    ft_clip_steps: int = 40  # CLIP: contrastive fine-tuning, then held-out retrieval
    ft_clip_lr: float = 2e-4
    ft_scenes: int = 2000
    eval_scenes: int = 1000
    ft_vision_steps: int = 50  # vision: tower + linear head on Fashion-MNIST and MNIST
    ft_vision_lr: float = 1e-4
    ft_vision_batch: int = 32
    ft_vision_train: int = 5000
    eval_classify: int = 1000
    text_train: int = 2000  # text: object count from in-vocabulary captions, linear probe
    text_test: int = 1000
    text_in_vocabulary: bool = True  # keep only captions whose every token the ancestry trained (else: count them)
    auto_k: int = 3
    fd_beta: float = 1.0  # feature distillation (CLIP-KD's FD): InfoNCE + beta * MSE of the embeddings

    @classmethod
    def quick(cls) -> Budget:
        """A smoke test: the tiny 2-layer ancestry, depths 1 and 2, one seed, a handful of steps (its 12-step
        ancestry trained a fifth of the caption vocabulary: the text task counts untrained captions, keeps them)."""
        return cls(depths=(1, 2), seeds=(0,), batch_size=16, ptft_max_steps=8, ptft_warmup=1, eval_every=4,
                   methods_at_c=("mmlg", "scratch"), ancestry_samples=384, extract_fraction=0.3,
                   extract_stages=2, aux_depth=2, extract_evals=2, curve_points=1, pool_scenes=96, pool_fashion=96,
                   curve_scenes=24, curve_fashion=24, ft_clip_steps=2, ft_scenes=32, eval_scenes=24,
                   ft_vision_steps=2, ft_vision_batch=16, ft_vision_train=48, eval_classify=24, text_train=48,
                   text_test=24, text_in_vocabulary=False, auto_k=1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
