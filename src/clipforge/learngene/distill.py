"""`KDStep`: the extraction objective, a `step_fn` for `clipforge.train.train`.

Part of clipforge's MM-LG reconstruction (docs/methods.md B.3, a [choice]: TLEG distils with pure soft KD at
τ = 1, which is the default here). The student is the Aux-Net (what `train()` optimises); the teacher
is the frozen ancestry, held by the step and never handed to the optimizer or the checkpoints.

    loss = α·KD + (1 − α)·InfoNCE + β·feature
    KD   = τ²·½[KL(p_t^{i→t} ‖ p_s^{i→t}) + KL(p_t^{t→i} ‖ p_s^{t→i})]

where p^{i→t} are the row softmaxes of the in-batch logits s·cos(img, txt)/τ, each model using its own
logit scale s (clamped to [1, 100] as in training), KL is averaged over the batch's rows, and τ²
keeps gradient sizes independent of τ (Hinton et al.). The feature term is the mean over both towers
of 1 − cos(student embedding, teacher embedding), defined only when the projection sizes agree.
Under DDP the KD softmaxes run over each rank's local batch; InfoNCE uses the global one (ClipLoss).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ClipforgeError
from ..models.encode import image_features, text_features
from ..train.loss import ClipLoss, clamped_scale, logit_scale_param


def _embed(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    img = F.normalize(image_features(model, batch["pixel_values"]).float(), dim=-1)
    txt = F.normalize(text_features(model, batch["input_ids"], batch.get("attention_mask")).float(), dim=-1)
    return img, txt


def _scale(model: nn.Module) -> Tensor:
    p = logit_scale_param(model)
    if p is None:
        raise ClipforgeError(f"{type(model).__name__} has no logit_scale: KD needs a full CLIP")
    return clamped_scale(p).to(p.device)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over rows."""
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau * tau


class KDStep:
    """`step(student, batch) -> (loss, logs)`; logs `kd`, `kd_i2t`, `kd_t2i`, `infonce`, and `feature` if β > 0."""

    def __init__(self, teacher: nn.Module, alpha: float = 1.0, beta: float = 0.0, tau: float = 1.0,
                 loss: ClipLoss | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ClipforgeError(f"alpha must lie in [0, 1], got {alpha}")
        if beta < 0 or tau <= 0:
            raise ClipforgeError(f"need beta >= 0 and tau > 0, got beta {beta}, tau {tau}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.beta, self.tau = alpha, beta, tau
        self.clip_loss = loss if loss is not None else ClipLoss()

    def _teacher_outputs(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if next(self.teacher.parameters()).device != device:  # train() moves only the student
            self.teacher.to(device)
        self.teacher.eval()
        with torch.no_grad():
            img, txt = _embed(self.teacher, batch)
            return img, txt, _scale(self.teacher)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        s_img, s_txt = _embed(model, batch)
        t_img, t_txt, t_scale = self._teacher_outputs(batch, s_img.device)
        s_logits = _scale(model) * s_img @ s_txt.T
        t_logits = t_scale * t_img @ t_txt.T
        kd_i2t = kd_loss(s_logits, t_logits, self.tau)
        kd_t2i = kd_loss(s_logits.T, t_logits.T, self.tau)
        kd = (kd_i2t + kd_t2i) / 2
        infonce = self.clip_loss(s_img, s_txt, logit_scale_param(model))
        loss = self.alpha * kd + (1 - self.alpha) * infonce
        logs: dict[str, Any] = {"kd": kd.detach(), "kd_i2t": kd_i2t.detach(), "kd_t2i": kd_t2i.detach(),
                                "infonce": infonce.detach()}
        if self.beta > 0:
            if s_img.shape[-1] != t_img.shape[-1]:
                raise ClipforgeError(f"feature distillation needs equal projection sizes (student "
                                     f"{s_img.shape[-1]}, teacher {t_img.shape[-1]}); set beta = 0")
            feature = ((1 - (s_img * t_img).sum(-1)).mean() + (1 - (s_txt * t_txt).sum(-1)).mean()) / 2
            loss = loss + self.beta * feature
            logs["feature"] = feature.detach()
        return loss, logs


class TowerStep:
    """Contrastive step for a one-tower model against a frozen partner CLIP's *other* tower (LiT-style).

    The partner (the ancestry) is held here, outside what `train()` optimises, and never trained; its
    logit scale sets the temperature. Needs equal projection sizes (descendants of a learngene built
    with `from_ancestry` have them).
    """

    def __init__(self, partner: nn.Module, kind: str) -> None:
        if kind not in ("vision", "text"):
            raise ClipforgeError(f"TowerStep needs a vision or text model, got kind {kind!r}")
        self.partner = partner.eval().requires_grad_(False)
        self.kind = kind
        self.loss = ClipLoss()

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        px, ids = batch["pixel_values"], batch["input_ids"]
        if next(self.partner.parameters()).device != px.device:  # train() moves only the student
            self.partner.to(px.device)
        self.partner.eval()
        with torch.no_grad():
            other = text_features(self.partner, ids) if self.kind == "vision" else image_features(self.partner, px)
        mine = image_features(model, px) if self.kind == "vision" else text_features(model, ids)
        if mine.shape[-1] != other.shape[-1]:
            raise ClipforgeError(f"the {self.kind} descendant projects to {mine.shape[-1]} dims, its partner to "
                                 f"{other.shape[-1]}: one-tower pre-training needs equal projection sizes")
        mine, other = F.normalize(mine.float(), dim=-1), F.normalize(other.float(), dim=-1)
        img, txt = (mine, other) if self.kind == "vision" else (other, mine)
        return self.loss(img, txt, self.partner.logit_scale.detach()), {}
