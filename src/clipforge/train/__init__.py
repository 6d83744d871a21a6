"""Training: one loop (`train`) with pluggable steps, the CLIP loss, freezing, sampling, checkpoints."""

from ..distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    gather_with_grad,
    init_distributed,
)
from ..schedule import Schedule, TrainConfig
from .loop import seed_everything, train
from .loss import (
    ClipLoss,
    ClipStep,
    clamp_logit_scale_,
    contrastive_logits,
    logit_scale_param,
)
from .optim import apply_freeze, cosine_with_warmup, param_groups
from .sampler import ResumableSampler, StatefulBatchSampler
from .step import enable_grad_checkpointing

__all__ = [
    "ClipLoss", "ClipStep", "DistInfo", "ResumableSampler", "Schedule", "StatefulBatchSampler", "TrainConfig",
    "apply_freeze", "barrier", "broadcast_object", "clamp_logit_scale_", "cleanup", "contrastive_logits",
    "cosine_with_warmup", "enable_grad_checkpointing", "gather_with_grad", "init_distributed", "logit_scale_param",
    "param_groups", "seed_everything", "train",
]
