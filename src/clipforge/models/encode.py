"""One way to get embeddings from any clipforge model (full CLIP, one tower, or a CLIP-MoE).

transformers 5 returns output objects from `get_image_features`; these helpers return the projected,
*unnormalised* embedding tensors, whatever the model class, so evaluation and training code need not
know which kind of model they hold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def image_features(model: nn.Module, pixel_values: Tensor) -> Tensor:
    """Projected image embeddings [B, D] (not normalised)."""
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, Tensor) else out.pooler_output
    if hasattr(model, "visual_projection"):
        return model(pixel_values=pixel_values).image_embeds
    raise TypeError(f"{type(model).__name__} has no vision tower")


def text_features(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Projected text embeddings [B, D] (not normalised), pooled at the end-of-text token."""
    if hasattr(model, "get_text_features"):
        out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, Tensor) else out.pooler_output
    if hasattr(model, "text_projection"):
        return model(input_ids=input_ids, attention_mask=attention_mask).text_embeds
    raise TypeError(f"{type(model).__name__} has no text tower")


def has_vision(model: nn.Module) -> bool:
    return hasattr(model, "vision_model")


def has_text(model: nn.Module) -> bool:
    return hasattr(model, "text_model")


def model_kind(model: nn.Module) -> str:
    """"clip" (both towers), "vision" or "text": the one answer to which towers a model has."""
    v, t = has_vision(model), has_text(model)
    return "clip" if v and t else "vision" if v else "text"


@torch.no_grad()
def normalized(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)
