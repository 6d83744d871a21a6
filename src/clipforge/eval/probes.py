"""Probes and fine-tuning: what a model's frozen or tuned features are worth on a labelled task.

* `linear_probe`: logistic regression on frozen image features, the L2 decay picked on a held-out split.
* `text_linear_probe`: the same protocol on frozen text features.
* `finetune_classifier`: the vision tower plus a linear head trained end to end (the training loop's
  warm-up + cosine schedule, `clipforge.train.optim.cosine_with_warmup`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..data.base import as_image
from ..errors import ClipforgeError
from ..models.encode import image_features
from ..train.optim import cosine_with_warmup
from .embed import embed_images, embed_texts, eval_mode, image_transform, model_device
from .metrics import classification_metrics
from .tasks import Device, _label, _n_classes, _need, _Recorder


def _fit_logreg(x: Tensor, y: Tensor, n_cls: int, weight_decay: float, max_iter: int) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (convex, zero init: deterministic)."""
    head = nn.Linear(x.shape[1], n_cls).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        # The bias is left unregularised, as in sklearn's LogisticRegression.
        loss = nn.functional.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def _probe(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, n_cls: int, weight_decays: Sequence[float],
           val_fraction: float, seed: int, max_iter: int) -> dict[str, float]:
    """The probe protocol on features: standardise, pick the decay on a seeded held-out fraction, refit, score."""
    if not weight_decays:
        raise ClipforgeError("a linear probe needs at least one weight decay")
    # Standardise with training statistics: unit-norm CLIP features have tiny per-dimension spread,
    # which makes L-BFGS converge slowly; the decay sweep absorbs the change of scale.
    mean, std = x_tr.mean(0), x_tr.std(0, unbiased=False).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    decays = sorted({float(w) for w in weight_decays}, reverse=True)
    best_wd, best_acc = decays[0], -1.0
    n_val = int(round(val_fraction * len(y_tr)))
    if len(decays) > 1 and 0 < n_val < len(y_tr):
        perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))
        val, fit = perm[:n_val], perm[n_val:]
        for wd in decays:
            with torch.no_grad():
                acc = classification_metrics(_fit_logreg(x_tr[fit], y_tr[fit], n_cls, wd, max_iter)(x_tr[val]),
                                             y_tr[val])["acc1"]
            if acc > best_acc:  # strict: on a tie the earlier, stronger decay stays
                best_acc, best_wd = acc, wd
    head = _fit_logreg(x_tr, y_tr, n_cls, best_wd, max_iter)
    with torch.no_grad():
        out = classification_metrics(head(x_te), y_te)
    out["weight_decay"] = best_wd
    return out


def linear_probe(
    model: nn.Module,
    train_ds: Any,
    test_ds: Any,
    weight_decays: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, float]:
    """Linear probe: a logistic-regression head on frozen, normalised image features.

    The L2 weight decay is picked from `weight_decays` by top-1 accuracy on a seeded held-out
    `val_fraction` of the training set (ties go to the stronger decay); the head is then refitted on
    the whole training set. Returns test ``acc1``, ``acc5`` (≥ 5 classes), ``mean_per_class_recall``
    and the chosen ``weight_decay``.
    """
    _need(model, True, False, "the linear probe")
    train_rec, test_rec = _Recorder(train_ds, _label), _Recorder(test_ds, _label)
    x_tr = embed_images(model, train_rec, batch_size=batch_size, device=device)
    x_te = embed_images(model, test_rec, batch_size=batch_size, device=device)
    y_tr, y_te = torch.tensor(train_rec.seen), torch.tensor(test_rec.seen)
    n_cls = _n_classes(train_ds, test_ds, labels=(y_tr, y_te))
    return _probe(x_tr, y_tr, x_te, y_te, n_cls, weight_decays, val_fraction, seed, max_iter)


@torch.no_grad()
def text_linear_probe(
    model: nn.Module,
    train: tuple[Sequence[str], Sequence[int]],
    test: tuple[Sequence[str], Sequence[int]],
    weight_decays: Sequence[float] = (1e-2, 1e-3, 1e-4),
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
    device: Device = None,
) -> dict[str, float]:
    """Linear probe on frozen, standardised text features: `(texts, labels)` to fit, `(texts, labels)` to score.

    Same protocol as `linear_probe` (decay picked on a seeded held-out fraction, ties to the stronger
    decay, refit on all training texts). Works for CLIPs and text-only models.
    """
    _need(model, False, True, "the text linear probe")
    x_tr, x_te = embed_texts(model, list(train[0]), device=device), embed_texts(model, list(test[0]), device=device)
    y_tr, y_te = torch.tensor(list(train[1])), torch.tensor(list(test[1]))
    n_cls = int(max(int(y_tr.max()), int(y_te.max())) + 1)
    return _probe(x_tr, y_tr, x_te, y_te, n_cls, weight_decays, val_fraction, seed, max_iter)


class _VisionClassifier(nn.Module):
    """A model's image encoder followed by a linear head on its projected (unnormalised) features."""

    def __init__(self, encoder: nn.Module, dim: int, n_cls: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, n_cls)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(image_features(self.encoder, pixel_values))


def _vision_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without its text tower, so fine-tuning never touches the caller's
    weights and does not pay for copying the text side."""
    # deepcopy returns memo[id(x)] for anything already in memo: mapping the text modules to None
    # leaves those slots empty in the copy.
    memo: dict[int, Any] = {}
    for name in ("text_model", "text_projection"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            memo[id(sub)] = None
    return copy.deepcopy(model, memo)


def _logits(clf: nn.Module, ds: Any, transform: Callable, batch_size: int, device: torch.device):
    logits, labels = [], []
    with eval_mode(clf):
        for a in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(a, min(a + batch_size, len(ds)))]
            px = torch.stack([transform(as_image(s)) for s in items]).to(device)
            logits.append(clf(px).float().cpu())
            labels.extend(_label(s) for s in items)
    return torch.cat(logits), torch.tensor(labels)


def finetune_classifier(
    model: nn.Module,
    train_ds: Any,
    test_ds: Any,
    steps: int = 500,
    lr: float = 1e-5,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.1,
    head_lr_scale: float = 10.0,
    warmup_frac: float = 0.1,
    device: Device = None,
) -> dict[str, float]:
    """Fine-tune a copy of the vision tower plus a linear head end to end; return test metrics.

    AdamW (head learning rate = `lr` × `head_lr_scale`, since it starts from scratch), linear
    warm-up then cosine decay to 0, gradient norm clipped at 1, batches drawn by a seeded shuffle.
    Works for full CLIP and vision-only models; the caller's model is left untouched. Given the
    seed the run is deterministic on CPU. Returns ``acc1``, ``acc5`` (≥ 5 classes),
    ``mean_per_class_recall`` and the mean ``train_loss`` of the last 10 steps.
    """
    _need(model, True, False, "fine-tuning")
    if steps < 1 or batch_size < 1 or len(train_ds) == 0 or len(test_ds) == 0:
        raise ClipforgeError("fine-tuning needs steps ≥ 1, batch_size ≥ 1 and non-empty train and test sets")
    device = torch.device(device) if device is not None else model_device(model)
    transform = image_transform(model)
    if getattr(train_ds, "classnames", None) or getattr(test_ds, "classnames", None):
        n_cls = _n_classes(train_ds, test_ds)
    else:  # no class list: scan the labels once
        n_cls = _n_classes(labels=[torch.tensor([_label(ds[i]) for i in range(len(ds))])
                                   for ds in (train_ds, test_ds)])
    dim = int(model.config.projection_dim)

    # A private RNG stream: the run is reproducible and the caller's RNG state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = _VisionClassifier(_vision_copy(model), dim, n_cls).to(device)
        head_ids = {id(p) for p in clf.head.parameters()}
        opt = torch.optim.AdamW([
            {"params": [p for p in clf.parameters() if id(p) not in head_ids], "lr": lr},
            {"params": list(clf.head.parameters()), "lr": lr * head_lr_scale},
        ], weight_decay=weight_decay)
        sched = cosine_with_warmup(opt, int(warmup_frac * steps), steps)  # the training loop's schedule
        gen = torch.Generator().manual_seed(seed)
        order: list[int] = []
        losses: list[float] = []
        clf.train()
        for step in range(steps):
            if len(order) < batch_size:  # refill with a fresh epoch permutation
                order += torch.randperm(len(train_ds), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            items = [train_ds[i] for i in idx]
            px = torch.stack([transform(as_image(s)) for s in items]).to(device)
            y = torch.tensor([_label(s) for s in items], device=device)
            loss = nn.functional.cross_entropy(clf(px), y)
            if not torch.isfinite(loss):
                raise ClipforgeError(f"fine-tuning diverged (loss {loss.item()} at step {step}); lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())

    logits, labels = _logits(clf, test_ds, transform, batch_size, device)
    out = classification_metrics(logits, labels)
    out["train_loss"] = sum(losses[-10:]) / len(losses[-10:])
    return out
