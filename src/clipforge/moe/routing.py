"""Routing statistics of a CLIP-MoE: which expert each block sends tokens to (the paper's Fig. 3).

For every MoE block of both towers, the share of tokens whose first (and second, ...) choice is each
expert, measured on a dataset. Text padding after the end-of-text token never counts. Optionally the
same shares split by a per-sample attribute (e.g. a scene's pair type), so one can see whether an
expert specialises. Results are JSON-ready; `plot_routing` draws the heat map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def plot_routing(stats: dict[str, Any], path: str | Path, title: str = "CLIP-MoE routing",
                 slots: Sequence[int] | None = None) -> Path:
    """Heat map(s) of token shares: rows = blocks of both towers, columns = experts, one panel per slot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.plots import _save

    k = int(stats["top_k"])
    slots = list(range(k)) if slots is None else list(slots)
    rows, labels = [], []
    for tower, short in (("vision", "img"), ("text", "txt")):
        for b, block in enumerate(stats[tower]["blocks"]):
            if stats[tower]["share"]:
                rows.append([stats[tower]["share"][s][b] for s in slots])
                labels.append(f"{short} block {block}")
    if not rows:
        raise ClipforgeError("no routing statistics to plot (the model has no MoE block)")
    E = int(stats["num_experts"])
    fig, axes = plt.subplots(1, len(slots), figsize=(1.0 + 1.6 * E * len(slots), 0.32 * len(rows) + 1.6),
                             squeeze=False)
    names = {0: "first choice", 1: "second choice"}
    for i, s in enumerate(slots):
        ax = axes[0][i]
        m = [r[i] for r in rows]
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(E))
        ax.set_xticklabels([f"E{e}" for e in range(E)])
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if i == 0 else [], fontsize=7)
        for r, row in enumerate(m):
            for c, v in enumerate(row):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_title(names.get(s, f"choice {s + 1}"), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="share of tokens", fraction=0.05)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
