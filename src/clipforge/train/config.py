"""The training loop's config: the shared `Schedule` (clipforge.schedule) plus the loop's own mechanics."""

from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Schedule


@dataclass
class TrainConfig(Schedule):
    """Everything that shapes a training run: the `Schedule` plus the loop's own mechanics."""

    min_lr_ratio: float = 0.0
    trainable: list[str] | None = None  # parameter name patterns (fnmatch) to train; None: all
    frozen: list[str] | None = None
    optimizer: str = "auto"  # AdamW kernel: "auto" (fused where supported, else foreach), "fused", "foreach", "for-loop"
    attention: str = "auto"  # attention kernel: "auto" (eager on a CPU under bf16 or for short sequences, else sdpa; train.fast), "sdpa", "eager"
    compile: bool = False  # torch.compile the step (eager fallback when the compiler is missing)
    eval_every: int = 0  # 0: never; else every N steps and at the end
    save_every: int = 0  # 0: never; else every N steps and at the end
    keep_checkpoints: int = 2
    local_loss: bool = True
    gather_with_grad: bool = True
    find_unused_parameters: bool = False
    deterministic: bool = False
