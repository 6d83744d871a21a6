"""Which parameters train, which decay, and the learning-rate schedule.

Freezing is by fnmatch-style patterns over full parameter names (`*.mlp.*`, `*router*`,
`text_model.*`): a parameter trains iff it matches some `trainable` pattern (when that list is given)
and no `frozen` pattern. A pattern that matches nothing is a typo, and an error.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ClipforgeError

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _check_patterns(names: list[str], patterns: list[str] | None, which: str) -> None:
    for p in patterns or []:
        if not any(fnmatchcase(n, p) for n in names):
            raise ClipforgeError(f"{which} pattern {p!r} matches no parameter of the model")


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, norm gains, embeddings and the logit scale: weight decay would only pull them to 0."""
    out = set()
    for mod_name, module in model.named_modules():
        decay_free_module = isinstance(module, (nn.Embedding, *_NORM_TYPES)) or "norm" in type(module).__name__.lower()
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if (decay_free_module or p.ndim < 2 or p_name == "bias" or "logit_scale" in p_name
                    or "embedding" in p_name):
                out.add(full)
    return out


def apply_freeze(model: nn.Module, trainable: list[str] | None = None, frozen: list[str] | None = None) -> list[str]:
    """Set `requires_grad` from the patterns and return the names of the trainable parameters."""
    names = [n for n, _ in model.named_parameters()]
    _check_patterns(names, trainable, "trainable")
    _check_patterns(names, frozen, "frozen")
    kept = []
    for name, p in model.named_parameters():
        train = (trainable is None or _matches(name, trainable)) and not _matches(name, frozen or [])
        p.requires_grad_(train)
        if train:
            kept.append(name)
    if not kept:
        raise ClipforgeError("the trainable/frozen patterns leave no parameter to train")
    return kept


def param_groups(model: nn.Module, trainable: list[str] | None = None, frozen: list[str] | None = None,
                 weight_decay: float = 0.0, decay_exclusions: bool = True) -> list[dict[str, Any]]:
    """Freeze by pattern, then split the trainable parameters into a decayed and an undecayed group
    (`decay_exclusions=False`: every trainable tensor decays, as the released CLIP-MoE code does).

    Returns optimizer groups (`params`, `weight_decay`, `param_names`); empty groups are left out.
    """
    kept = set(apply_freeze(model, trainable, frozen))
    no_decay = _no_decay_names(model) if decay_exclusions else set()
    decay_group: dict[str, Any] = {"params": [], "param_names": [], "weight_decay": weight_decay}
    plain_group: dict[str, Any] = {"params": [], "param_names": [], "weight_decay": 0.0}
    # named_parameters() de-duplicates tied weights, so a shared tensor lands in one group only.
    for name, p in model.named_parameters():
        if name not in kept:
            continue
        group = plain_group if name in no_decay else decay_group
        group["params"].append(p)
        group["param_names"].append(name)
    return [g for g in (decay_group, plain_group) if g["params"]]


def cosine_with_warmup(optimizer: Optimizer, warmup: int, total: int, min_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio` × lr at step `total`."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
