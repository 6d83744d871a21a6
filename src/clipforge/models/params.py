"""Parameters stored per tower: the count a model card, `clipforge info` and every cost table report."""

from __future__ import annotations

from torch import nn


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
