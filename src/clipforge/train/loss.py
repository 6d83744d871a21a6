"""The CLIP contrastive loss (symmetric InfoNCE), distributed the way open_clip does it.

At world size > 1 each rank gathers every rank's features and scores its own rows against all
columns (`local_loss`), with labels offset by `rank * B`. Because the gather's backward sums each
slice's gradient over ranks, DDP's gradient *average* of these per-rank means is exactly the
gradient of the single-process loss on the concatenated batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as D
from ..models.encode import image_features, text_features

# CLIP caps the learned temperature at 100 (exp(logit_scale) <= 100) and keeps it >= 1.
LOGIT_SCALE_MIN = 0.0
LOGIT_SCALE_MAX = math.log(100.0)


def contrastive_logits(image_features: Tensor, text_features: Tensor, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """(logits_per_image [Bi, Bt], logits_per_text [Bt, Bi]) = scale · cosine similarities.

    `scale` is the multiplier (e.g. 100), not its log; features are expected normalised.
    """
    logits_per_image = scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clamped_scale(logit_scale: Tensor | float) -> Tensor:
    """exp(logit_scale) with logit_scale clamped to [0, ln 100] (gradient flows inside the range)."""
    logit_scale = torch.as_tensor(logit_scale, dtype=torch.float32)
    return logit_scale.float().clamp(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX).exp()


def logit_scale_param(model: nn.Module) -> nn.Parameter | None:
    """The model's `logit_scale` parameter (a top-level attribute, else the first parameter so named)."""
    direct = getattr(model, "logit_scale", None)
    if isinstance(direct, nn.Parameter):
        return direct
    for name, p in model.named_parameters():
        if name == "logit_scale" or name.endswith(".logit_scale"):
            return p
    return None


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module) -> None:
    """Clamp the model's `logit_scale` in place to [0, ln 100], as open_clip does after each step."""
    p = logit_scale_param(model)
    if p is not None:
        p.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)


class ClipLoss(nn.Module):
    """Mean of image→text and text→image cross-entropy over a (possibly distributed) batch.

    `local_loss`: score only this rank's rows against all gathered columns (memory O(B·N) instead
    of O(N²)); `gather_with_grad`: let gradients flow through other ranks' features too (needed for
    the exact single-process gradient). Both only matter at world size > 1.
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.label_smoothing = label_smoothing

    def _gather(self, x: Tensor) -> Tensor:
        if self.gather_with_grad:
            return D.gather_with_grad(x)
        # Without grad through other ranks, put our own slice back in so it keeps its graph.
        full = D.gather_no_grad(x)
        rows = x.shape[0]
        parts = list(full.split(rows, dim=0))
        parts[D.rank()] = x
        return torch.cat(parts, dim=0)

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        """`image_features`, `text_features`: normalised [B, D]; `logit_scale`: the log temperature."""
        # The loss runs in float32 even under autocast: softmax over N columns is precision hungry.
        device_type = image_features.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            img, txt = image_features.float(), text_features.float()
            scale = clamped_scale(logit_scale).to(img.device)
            batch = img.shape[0]
            if D.world_size() > 1:
                all_img, all_txt = self._gather(img), self._gather(txt)
                if self.local_loss:
                    logits_per_image = scale * img @ all_txt.T
                    logits_per_text = scale * txt @ all_img.T
                    labels = torch.arange(batch, device=img.device) + D.rank() * batch
                else:
                    logits_per_image, logits_per_text = contrastive_logits(all_img, all_txt, scale)
                    labels = torch.arange(all_img.shape[0], device=img.device)
            else:
                logits_per_image, logits_per_text = contrastive_logits(img, txt, scale)
                labels = torch.arange(batch, device=img.device)
            ce_i = F.cross_entropy(logits_per_image, labels, label_smoothing=self.label_smoothing)
            ce_t = F.cross_entropy(logits_per_text, labels, label_smoothing=self.label_smoothing)
            return (ce_i + ce_t) / 2


class ClipStep:
    """The default training step: encode both towers, normalise, ClipLoss with the model's logit scale.

    Called as `step(model, batch) -> (loss, logs)` with `batch` holding `pixel_values` [B, C, H, W],
    `input_ids` [B, T] and optionally `attention_mask`. A model without a `logit_scale` parameter
    uses `fixed_logit_scale` (a multiplier, default 100).
    """

    def __init__(self, loss: ClipLoss | None = None, fixed_logit_scale: float = 100.0) -> None:
        self.loss = loss if loss is not None else ClipLoss()
        self.fallback_log_scale = math.log(fixed_logit_scale)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        img = F.normalize(image_features(model, batch["pixel_values"]).float(), dim=-1)
        txt = F.normalize(
            text_features(model, batch["input_ids"], batch.get("attention_mask")).float(), dim=-1)
        scale = logit_scale_param(model)
        loss = self.loss(img, txt, scale if scale is not None else self.fallback_log_scale)
        return loss, {}
