"""`KDStep`: the extraction objective, a `step_fn` for `clipforge.train.train`.

Part of clipforge's MM-LG reconstruction (docs/methods.md B.3, a [choice]: TLEG distils with pure soft KD at
τ = 1, which is the default here). The student is the Aux-Net (what `train()` optimises); the teacher
is the frozen ancestry, held by the step and never handed to the optimizer or the checkpoints.

    loss = α·KD + (1 − α)·InfoNCE + β·feature
    KD   = τ²·½[KL(p_t^{i→t} ‖ p_s^{i→t}) + KL(p_t^{t→i} ‖ p_s^{t→i})]

where p^{i→t} are the row softmaxes of the in-batch logits s·cos(img, txt)/τ, each model using its own
logit scale s (clamped to [1, 100] as in training; `tie_temperature`: the student uses the teacher's s
in KD and InfoNCE alike), KL is averaged over the batch's rows, and τ² keeps gradient sizes
independent of τ (Hinton et al.). KD on both affinity directions is also TinyCLIP's affinity
mimicking. The feature term, over both towers and only for equal projection sizes: "cosine", the
mean of 1 − cos(student, teacher) of the normalised embeddings; "mse", the mean squared error of the
unnormalised projected embeddings (CLIP-KD's feature distillation). Under DDP the KD softmaxes run
over each rank's local batch; InfoNCE uses the global one (ClipLoss).

`Distill` is the objective as a record (what a learngene's or a descendant's provenance stores);
`DepthSampledStep` trains an Aux-Net at a depth drawn per step, so that the weighted sum is trained at
every position l/L' a descendant will use (docs/methods.md B.3b). `TowerStep` is the one-tower
counterpart (a vision- or text-only student against the frozen teacher's other tower, with the same
α / β terms). `TeacherCache`: the frozen teacher's embeddings of each distinct (image, caption) pair,
computed once and reused by every step that distils from that teacher while the cache is active
(`teacher_cache`); a wall-time device only, the outputs are the teacher's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ClipforgeError
from ..models.encode import image_features, text_features
from ..train.loss import ClipLoss, clamped_scale, logit_scale_param


def _raw(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    img = image_features(model, batch["pixel_values"]).float()
    txt = text_features(model, batch["input_ids"], batch.get("attention_mask")).float()
    return img, txt


def _embed(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    img, txt = _raw(model, batch)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def _scale(model: nn.Module) -> Tensor:
    p = logit_scale_param(model)
    if p is None:
        raise ClipforgeError(f"{type(model).__name__} has no logit_scale: KD needs a full CLIP")
    return clamped_scale(p).to(p.device)


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers: two loads of the same weights give the same one."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _row_keys(batch: dict[str, Any]) -> list[bytes]:
    """One key per row: the image's pixels and the caption's token ids without trailing padding."""
    px, ids = batch["pixel_values"].detach().cpu(), batch["input_ids"].detach().cpu()
    keys = []
    for p, t in zip(px, ids, strict=True):
        nonpad = (t != 0).nonzero()
        t = t[: int(nonpad.max()) + 1] if len(nonpad) else t[:1]  # the causal text tower ignores what follows
        h = hashlib.blake2b(p.contiguous().numpy().tobytes(), digest_size=16)
        h.update(t.contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


class TeacherCache:
    """The frozen `teacher`'s projected (unnormalised) image and text embeddings, one pair per distinct
    (image, caption) row, keyed by the row's content, so any run reading the same data reuses them.

    A miss runs the teacher on the missing rows (under whatever autocast the caller runs); `hits` and
    `misses` count rows. Install it with `teacher_cache(cache)`: every `KDStep` / `TowerStep` built
    meanwhile whose teacher holds the same weights (`fingerprint`) reads through it.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.fingerprint = fingerprint(teacher)
        self.store: dict[bytes, tuple[Tensor, Tensor]] = {}
        self.hits = self.misses = 0

    def serves(self, model: nn.Module) -> bool:
        return model is self.teacher or fingerprint(model) == self.fingerprint

    def outputs(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
        """(image, text) raw embeddings of the batch's rows, from the store or the teacher."""
        keys = _row_keys(batch)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            if next(self.teacher.parameters()).device != device:
                self.teacher.to(device)
            rows = torch.tensor(missing, device=batch["pixel_values"].device)
            sub = {k: batch[k].index_select(0, rows.to(batch[k].device)) for k in ("pixel_values", "input_ids")}
            with torch.no_grad():
                img, txt = _raw(self.teacher, sub)
            for j, i in enumerate(missing):
                self.store[keys[i]] = (img[j].detach().float().cpu(), txt[j].detach().float().cpu())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        img = torch.stack([self.store[k][0] for k in keys]).to(device)
        txt = torch.stack([self.store[k][1] for k in keys]).to(device)
        return img, txt

    def describe(self) -> dict[str, Any]:
        return {"rows": len(self.store), "hits": self.hits, "misses": self.misses}


_ACTIVE: list[TeacherCache] = []


@contextlib.contextmanager
def teacher_cache(cache: TeacherCache) -> Iterator[TeacherCache]:
    """Steps built inside this block distil through `cache` when their teacher has its weights."""
    _ACTIVE.append(cache)
    try:
        yield cache
    finally:
        _ACTIVE.remove(cache)


def cache_for(teacher: nn.Module) -> TeacherCache | None:
    """The active cache that serves `teacher`, if any."""
    return next((c for c in reversed(_ACTIVE) if c.serves(teacher)), None)


def _teacher_raw(teacher: nn.Module, cache: TeacherCache | None, batch: dict[str, Any],
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """The frozen teacher's raw (image, text) embeddings of `batch`, through `cache` when there is one."""
    if cache is not None:
        return cache.outputs(batch, device)
    if next(teacher.parameters()).device != device:  # train() moves only the student
        teacher.to(device)
    teacher.eval()
    with torch.no_grad():
        return _raw(teacher, batch)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over rows."""
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau * tau


FEATURES = ("cosine", "mse")


@dataclass(frozen=True)
class Distill:
    """The distillation objective: α·KD + (1 − α)·InfoNCE + β·feature (module docstring)."""

    alpha: float = 1.0  # KD share; the rest is InfoNCE on the student's own logits
    beta: float = 0.0  # weight of the feature term (0: none)
    tau: float = 1.0  # KD temperature
    feature: str = "cosine"  # "cosine" (normalised) or "mse" (unnormalised, CLIP-KD)
    tie_temperature: bool = False  # the student's logits use the teacher's logit scale

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ClipforgeError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.beta < 0 or self.tau <= 0:
            raise ClipforgeError(f"need beta >= 0 and tau > 0, got beta {self.beta}, tau {self.tau}")
        if self.feature not in FEATURES:
            raise ClipforgeError(f"feature loss {self.feature!r} is not one of {', '.join(FEATURES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def step(self, teacher: nn.Module) -> KDStep:
        return KDStep(teacher, self.alpha, self.beta, self.tau, feature=self.feature,
                      tie_temperature=self.tie_temperature)


class KDStep:
    """`step(student, batch) -> (loss, logs)`; logs `kd`, `kd_i2t`, `kd_t2i`, `infonce`, and `feature` if β > 0."""

    def __init__(self, teacher: nn.Module, alpha: float = 1.0, beta: float = 0.0, tau: float = 1.0,
                 loss: ClipLoss | None = None, *, feature: str = "cosine", tie_temperature: bool = False) -> None:
        Distill(alpha, beta, tau, feature, tie_temperature)  # one value check
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.beta, self.tau = alpha, beta, tau
        self.feature, self.tie_temperature = feature, tie_temperature
        self.clip_loss = loss if loss is not None else ClipLoss()
        self.cache = cache_for(self.teacher)

    def _teacher_outputs(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        img, txt = _teacher_raw(self.teacher, self.cache, batch, device)
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return img, txt, _scale(self.teacher)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        s_raw_img, s_raw_txt = _raw(model, batch)
        s_img, s_txt = F.normalize(s_raw_img, dim=-1), F.normalize(s_raw_txt, dim=-1)
        t_raw_img, t_raw_txt, t_scale = self._teacher_outputs(batch, s_img.device)
        t_img, t_txt = F.normalize(t_raw_img, dim=-1), F.normalize(t_raw_txt, dim=-1)
        s_scale = t_scale if self.tie_temperature else _scale(model)
        s_logits = s_scale * s_img @ s_txt.T
        t_logits = t_scale * t_img @ t_txt.T
        kd_i2t = kd_loss(s_logits, t_logits, self.tau)
        kd_t2i = kd_loss(s_logits.T, t_logits.T, self.tau)
        kd = (kd_i2t + kd_t2i) / 2
        # ClipLoss takes the log-space parameter; a tied student borrows the teacher's.
        scale_arg = logit_scale_param(self.teacher).detach() if self.tie_temperature else logit_scale_param(model)
        infonce = self.clip_loss(s_img, s_txt, scale_arg)
        loss = self.alpha * kd + (1 - self.alpha) * infonce
        logs: dict[str, Any] = {"kd": kd.detach(), "kd_i2t": kd_i2t.detach(), "kd_t2i": kd_t2i.detach(),
                                "infonce": infonce.detach()}
        if self.beta > 0:
            if s_img.shape[-1] != t_img.shape[-1]:
                raise ClipforgeError(f"feature distillation needs equal projection sizes (student "
                                     f"{s_img.shape[-1]}, teacher {t_img.shape[-1]}); set beta = 0")
            if self.feature == "mse":
                feature = (F.mse_loss(s_raw_img, t_raw_img) + F.mse_loss(s_raw_txt, t_raw_txt)) / 2
            else:
                feature = ((1 - (s_img * t_img).sum(-1)).mean() + (1 - (s_txt * t_txt).sum(-1)).mean()) / 2
            loss = loss + self.beta * feature
            logs["feature"] = feature.detach()
        return loss, logs


class DepthSampledStep:
    """Wraps a step: each call runs it on an Aux-Net of a depth drawn uniformly from `depths` (both towers).

    The Aux-Nets of other depths share the trained model's learngene (built once, `build_auxnet`), so every
    gradient lands in the same Parameters. The draw uses Python's `random`, whose state the training loop
    checkpoints, so a resumed run draws the same depths. One process only: a net outside the DDP wrapper
    would skip DDP's gradient averaging.
    """

    def __init__(self, step: Any, depths: Sequence[int]) -> None:
        if not depths or any(int(d) < 1 for d in depths):
            raise ClipforgeError(f"sampled Aux-Net depths must be >= 1, got {list(depths)}")
        self.step, self.depths = step, [int(d) for d in depths]
        self.nets: dict[int, nn.Module] = {}
        self.counts = {d: 0 for d in self.depths}

    def _net(self, model: nn.Module, depth: int) -> nn.Module:
        lg = model.learngene
        if (lg.config.aux_depth_vision, lg.config.aux_depth_text) == (depth, depth):
            return model
        if depth not in self.nets:
            from .auxnet import build_auxnet

            self.nets[depth] = build_auxnet(lg, depth, depth)
        return self.nets[depth].train(model.training)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ClipforgeError("sampling the Aux-Net depth per step runs in one process only (no torchrun)")
        depth = random.choice(self.depths)
        self.counts[depth] += 1
        loss, logs = self.step(self._net(model, depth), batch)
        return loss, {**logs, "aux_depth": depth}


class TowerStep:
    """Step for a one-tower student against a frozen partner CLIP's *other* tower (LiT-style), optionally
    distilling from the partner's own tower of the student's kind.

        loss = α·KD + (1 − α)·InfoNCE + β·feature

    InfoNCE contrasts the student's embeddings with the partner's other-tower embeddings at the partner's
    logit scale (the default, α = β = 0, is plain LiT-style pre-training). KD: τ²·½[KL both ways] between
    the affinities of (partner's same tower, partner's other tower) and of (student, partner's other
    tower), at the partner's scale. The feature term compares the student's embeddings with the partner's
    same-tower ones ("cosine" or "mse", as `Distill`). The partner is held here, outside what `train()`
    optimises, and never trained; it reads through an active `TeacherCache` holding its weights. Needs
    equal projection sizes (descendants of a learngene built with `from_ancestry`, and the benchmark's
    narrower baselines, keep the ancestry's projection size, so no extra projection is needed).
    """

    def __init__(self, partner: nn.Module, kind: str, alpha: float = 0.0, beta: float = 0.0, tau: float = 1.0,
                 feature: str = "cosine") -> None:
        if kind not in ("vision", "text"):
            raise ClipforgeError(f"TowerStep needs a vision or text model, got kind {kind!r}")
        Distill(alpha, beta, tau, feature)  # one value check
        self.partner = partner.eval().requires_grad_(False)
        self.kind, self.alpha, self.beta, self.tau, self.feature = kind, alpha, beta, tau, feature
        self.loss = ClipLoss()
        self.cache = cache_for(self.partner)

    def _partner(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
        """(partner's same-tower, partner's other-tower) raw embeddings."""
        if self.cache is not None or self.alpha > 0 or self.beta > 0:
            img, txt = _teacher_raw(self.partner, self.cache, batch, device)
        else:  # plain LiT: only the other tower is needed
            if next(self.partner.parameters()).device != device:  # train() moves only the student
                self.partner.to(device)
            self.partner.eval()
            with torch.no_grad():
                other = text_features(self.partner, batch["input_ids"]) if self.kind == "vision" \
                    else image_features(self.partner, batch["pixel_values"])
            return other.float(), other.float()  # the first is unused without KD or a feature term
        return (img, txt) if self.kind == "vision" else (txt, img)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        px, ids = batch["pixel_values"], batch["input_ids"]
        raw = (image_features(model, px) if self.kind == "vision" else text_features(model, ids)).float()
        same, other = self._partner(batch, raw.device)
        if raw.shape[-1] != other.shape[-1]:
            raise ClipforgeError(f"the {self.kind} descendant projects to {raw.shape[-1]} dims, its partner to "
                                 f"{other.shape[-1]}: one-tower pre-training needs equal projection sizes")
        if next(self.partner.parameters()).device != raw.device:
            self.partner.to(raw.device)
        mine, other_n = F.normalize(raw, dim=-1), F.normalize(other, dim=-1)
        img, txt = (mine, other_n) if self.kind == "vision" else (other_n, mine)
        scale = self.partner.logit_scale.detach()
        infonce = self.loss(img, txt, scale)
        loss, logs = (1 - self.alpha) * infonce, {"infonce": infonce.detach()}
        if self.alpha > 0:
            s = clamped_scale(scale).to(raw.device)
            same_n = F.normalize(same, dim=-1)
            s_logits, t_logits = s * mine @ other_n.T, s * same_n @ other_n.T
            kd = (kd_loss(s_logits, t_logits, self.tau) + kd_loss(s_logits.T, t_logits.T, self.tau)) / 2
            loss = loss + self.alpha * kd
            logs["kd"] = kd.detach()
        if self.beta > 0:
            feature = F.mse_loss(raw, same) if self.feature == "mse" else \
                (1 - (mine * F.normalize(same, dim=-1)).sum(-1)).mean()
            loss = loss + self.beta * feature
            logs["feature"] = feature.detach()
        return loss, logs
