"""Routing statistics of a CLIP-MoE: which expert each block sends tokens to (the paper's Fig. 3).

For every MoE block of both towers, the share of tokens whose first (and second, ...) choice is each
expert, measured on a dataset. Text padding after the end-of-text token never counts. Optionally the
same shares split by a per-sample attribute (e.g. a scene's pair type), so one can see whether an
expert specialises. Results are JSON-ready; `clipforge.report.moe_run.plot_routing` draws the heat map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ClipforgeError
from ..models.registry import EOS_TOKEN_ID
from .balance import text_token_mask


def _slot_counts(logits: Tensor, top_k: int, weights: Tensor) -> Tensor:
    """[k, E]: weighted count of tokens whose slot-th choice is each expert."""
    chosen = logits.float().topk(top_k, dim=-1).indices  # [N, k]
    out = torch.zeros(top_k, logits.shape[-1])
    for slot in range(top_k):
        out[slot].index_add_(0, chosen[:, slot].cpu(), weights.cpu())
    return out


@torch.no_grad()
def routing_stats(model: nn.Module, dataset: Any, batch_size: int = 128, limit: int | None = None,
                  device: str | torch.device | None = None) -> dict[str, Any]:
    """Share of tokens per (block, expert) as first / second / ... choice, for both towers.

    Returns {"num_experts", "top_k", "samples", tower: {"blocks": [...], "tokens": n,
    "share": [[[slot 0 row per block]...]...] indexed [slot][block][expert]}} with rows summing to 1.
    """
    from ..data.collate import Collator
    from ..eval.embed import model_context_length
    from ..models.preprocess import transform_for
    from ..models.tokenizer import tokenizer_for

    if not hasattr(model, "moe_layers"):
        raise ClipforgeError(f"routing statistics need a CLIP-MoE, got {type(model).__name__}")
    cfg = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    collate = Collator(transform_for(cfg), model_context_length(model), caption="first", tokenizer=tokenizer_for(model))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    eos = getattr(cfg.text_config, "eos_token_id", EOS_TOKEN_ID)
    counts: dict[str, Tensor | None] = {"vision": None, "text": None}
    tokens = {"vision": 0.0, "text": 0.0}
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        px = batch["pixel_values"].to(device)
        ids = batch["input_ids"].to(device)
        outs = {"vision": (model.get_image_features(pixel_values=px, output_router_logits=True), None),
                "text": (model.get_text_features(input_ids=ids, output_router_logits=True),
                         text_token_mask(ids, eos).reshape(-1).float())}
        for tower, (out, mask) in outs.items():
            logits = out.router_logits or []
            if not logits:
                continue
            w = mask if mask is not None else torch.ones(logits[0].shape[0], device=device)
            c = torch.stack([_slot_counts(x, cfg.top_k, w) for x in logits], dim=1)  # [k, blocks, E]
            counts[tower] = c if counts[tower] is None else counts[tower] + c
            tokens[tower] += float(w.sum())
    model.train(was_training)
    result: dict[str, Any] = {"num_experts": cfg.num_experts, "top_k": cfg.top_k, "samples": n}
    for tower in ("vision", "text"):
        c = counts[tower]
        blocks = cfg.moe_layers(tower)
        if c is None:
            result[tower] = {"blocks": blocks, "tokens": 0, "share": []}
            continue
        share = c / c.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        result[tower] = {"blocks": blocks, "tokens": int(tokens[tower]), "share": share.tolist()}
    return result


def load_shares(stats: dict[str, Any]) -> dict[str, float]:
    """Summary numbers: per tower, the largest and smallest first-choice share of any expert, averaged
    over blocks (uniform routing gives 1/E for both)."""
    out = {}
    for tower in ("vision", "text"):
        share = stats[tower]["share"]
        if not share:
            continue
        first = torch.tensor(share[0])
        out[f"{tower}_first_max"] = float(first.max(dim=-1).values.mean())
        out[f"{tower}_first_min"] = float(first.min(dim=-1).values.mean())
    return out
