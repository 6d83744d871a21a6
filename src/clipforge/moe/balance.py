"""Load-balancing losses for router training, and the router-training step (docs/methods.md A.3).

Two forms, selected by `CLIPMoEConfig.balance_loss`:

* "switch" (the paper): per MoE block, E · Σ_e f_e · P_e, where f_e is the share of tokens whose
  top-1 expert is e and P_e the mean router probability of e; averaged over all MoE blocks of both
  towers. Minimum 1 (uniform routing).
* "mixtral" (the released code): per tower, the router logits of all its MoE blocks pooled, the
  top-k assignments counted, E · Σ_{slot, e} tokens_per_expert[slot, e] · P_e (minimum k);
  image term + ½ text term (the code's weights with its optional short-text term off).

Padding never counts: text tokens after the first end-of-text token are masked out of both forms.
Each rank computes the loss on its own tokens and DDP averages the gradients, as Mixtral and Switch
do; the released code also divides its balance loss by the world size, which only rescales α by
1/world_size. We do not divide (α means the same on any number of GPUs); pass
`divide_by_world_size=True` to `RouterStep` to reproduce the released code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as D
from ..models.captions import caption_mask
from ..models.registry import EOS_TOKEN_ID
from ..train.loss import ClipLoss, logit_scale_param


def text_token_mask(input_ids: Tensor, eos_token_id: int = EOS_TOKEN_ID) -> Tensor:
    """[B, T] bool: True at real caption tokens (see `clipforge.models.captions.caption_mask`)."""
    return caption_mask(input_ids, eos_token_id)


def _weights(mask: Tensor | None, n_tokens: int, device: torch.device) -> Tensor:
    """Per-token weights [N] (1 = counts, 0 = padding) for one block's logits."""
    if mask is None:
        return torch.ones(n_tokens, device=device)
    w = mask.reshape(-1).to(device=device, dtype=torch.float32)
    if w.numel() != n_tokens:
        raise ValueError(f"mask has {w.numel()} tokens but the router logits have {n_tokens}")
    return w


def _masked_mean(x: Tensor, w: Tensor) -> Tensor:
    """Mean of x [N, ...] over dim 0, weighted by w [N]."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x * w.view(shape)).sum(dim=0) / w.sum().clamp_min(1.0)


def switch_balance_loss(router_logits: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Paper form: mean over blocks of E · Σ_e f_e · P_e (f_e: top-1 share, P_e: mean probability).

    `router_logits`: one [N, E] tensor per MoE block (N = B·T tokens); `mask`: [B, T] or [N], True
    for tokens that count. Returns a scalar (0 when there are no blocks).
    """
    if not router_logits:
        return torch.zeros(())
    losses = []
    for logits in router_logits:
        n_tokens, n_experts = logits.shape
        w = _weights(mask, n_tokens, logits.device)
        probs = logits.float().softmax(dim=-1)
        top1 = F.one_hot(probs.argmax(dim=-1), n_experts).float()
        losses.append(n_experts * (_masked_mean(top1, w) * _masked_mean(probs, w)).sum())
    return torch.stack(losses).mean()


def mixtral_balance_loss(router_logits: Sequence[Tensor], top_k: int, mask: Tensor | None = None) -> Tensor:
    """Released-code form: all blocks pooled, E · Σ_{slot,e} tokens_per_expert[slot, e] · P_e.

    tokens_per_expert[slot, e] is the share of (token, block) pairs whose slot-th choice is e, P_e the
    mean probability of e over the same pairs. Returns a scalar (0 when there are no blocks).
    """
    if not router_logits:
        return torch.zeros(())
    n_tokens, n_experts = router_logits[0].shape
    logits = torch.cat([x.float() for x in router_logits], dim=0)
    w = _weights(mask, n_tokens, logits.device).repeat(len(router_logits))
    probs = logits.softmax(dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices
    tokens_per_expert = _masked_mean(F.one_hot(chosen, n_experts).float(), w)  # [k, E]
    return n_experts * (tokens_per_expert * _masked_mean(probs, w).unsqueeze(0)).sum()


def balance_loss(kind: str, image_logits: Sequence[Tensor], text_logits: Sequence[Tensor], top_k: int,
                 text_mask: Tensor | None = None) -> Tensor:
    """The model-level balance loss of `kind` ("switch" or "mixtral"), both towers combined."""
    if kind == "switch":
        n_img, n_txt = len(image_logits), len(text_logits)
        if n_img + n_txt == 0:
            return torch.zeros(())
        # Mean over all blocks = block-count-weighted mean of the towers' means.
        img = switch_balance_loss(image_logits)
        txt = switch_balance_loss(text_logits, text_mask)
        return (n_img * img.to(txt.device) + n_txt * txt) / (n_img + n_txt)
    if kind == "mixtral":
        img = mixtral_balance_loss(image_logits, top_k)
        txt = mixtral_balance_loss(text_logits, top_k, text_mask)
        return img.to(txt.device) + 0.5 * txt
    raise ValueError(f"unknown balance loss {kind!r}; choose 'switch' or 'mixtral'")


def expert_load(router_logits: Sequence[Tensor], top_k: int, mask: Tensor | None = None) -> Tensor:
    """[blocks, E]: the share of each block's top-k assignments that went to each expert (rows sum to 1)."""
    rows = []
    for logits in router_logits:
        w = _weights(mask, logits.shape[0], logits.device)
        chosen = logits.float().topk(top_k, dim=-1).indices
        counts = _masked_mean(F.one_hot(chosen, logits.shape[-1]).float().sum(dim=1), w)
        rows.append(counts / top_k)
    return torch.stack(rows) if rows else torch.zeros(0, 0)


class RouterStep:
    """A `train()` step for router training: CLIP InfoNCE + α · balance loss, from one forward per tower.

    `alpha` and `kind` default to the model config's `balance_alpha` and `balance_loss`. The logit
    scale is the model's `logit_scale` (fix it with `TrainConfig.fixed_logit_scale`, e.g. 100);
    `fallback_logit_scale` (a multiplier) serves models without one. Logs `clip_loss` and `balance_loss`.
    """

    def __init__(self, loss: ClipLoss | None = None, alpha: float | None = None, kind: str | None = None,
                 fallback_logit_scale: float = 100.0, divide_by_world_size: bool = False) -> None:
        self.loss = loss if loss is not None else ClipLoss()
        self.alpha = alpha
        self.kind = kind
        self.fallback_log_scale = math.log(fallback_logit_scale)
        self.divide_by_world_size = divide_by_world_size

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        cfg = model.config
        input_ids = batch["input_ids"]
        vision = model.get_image_features(pixel_values=batch["pixel_values"], output_router_logits=True)
        text = model.get_text_features(input_ids=input_ids, attention_mask=batch.get("attention_mask"),
                                       output_router_logits=True)
        img = F.normalize(vision.pooler_output.float(), dim=-1)
        txt = F.normalize(text.pooler_output.float(), dim=-1)
        scale = logit_scale_param(model)
        clip = self.loss(img, txt, scale if scale is not None else self.fallback_log_scale)
        kind = self.kind or cfg.balance_loss
        alpha = cfg.balance_alpha if self.alpha is None else self.alpha
        eos = getattr(cfg.text_config, "eos_token_id", EOS_TOKEN_ID)
        bal = balance_loss(kind, vision.router_logits, text.router_logits, cfg.top_k,
                           text_token_mask(input_ids, eos)).to(clip.device)
        if self.divide_by_world_size:
            bal = bal / D.world_size()
        return clip + alpha * bal, {"clip_loss": clip.detach(), "balance_loss": bal.detach()}
