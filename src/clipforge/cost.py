"""Parameters stored and active, per tower: what a model costs to keep and to run."""

from __future__ import annotations

from torch import nn


def _numel(params) -> int:
    return int(sum(p.numel() for p in params))


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters stored, split into vision tower, text tower and the rest (logit scale, ...).

    Projections count with their tower. Shared tensors (an MM-LG learngene tied into both towers)
    are counted once, as `parameters()` deduplicates them.
    """
    seen: set[int] = set()
    out = {"vision": 0, "text": 0, "other": 0}
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith(("vision_model.", "visual_projection")):
            out["vision"] += p.numel()
        elif name.startswith(("text_model.", "text_projection")):
            out["text"] += p.numel()
        else:
            out["other"] += p.numel()
    out["total"] = out["vision"] + out["text"] + out["other"]
    return out


def count_trainable(model: nn.Module) -> int:
    return _numel(p for p in model.parameters() if p.requires_grad)
