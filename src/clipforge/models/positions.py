"""Text position tables: Long-CLIP's stretch (77 → 248) and its two-table layout (docs/methods.md, A.6).

Long-CLIP (Zhang et al., 2024), which the released CLIP-MoE code builds on, lets CLIP read captions
longer than 77 tokens by stretching the position table: the first `keep` positions (well trained,
short captions live there) stay; each later gap is interpolated into `factor` positions; the last row
is extrapolated. For `keep = 20`, `factor = 4` and P with L = 77 rows:

    P'[i]            = P[i]                                  i < 20
    P'[20 + 4i + r]  = (1 - r/4) P[20 + i] + (r/4) P[21 + i]  i = 0..55, r = 0..3
    P'[244 + r]      = P[76] + (r/4) (P[76] - P[75])          r = 0..3

so P' has keep + factor·(L − keep) = 248 rows. The released code then trains two tables, positions
< 20 reading the first and the rest the second; as each position reads exactly one table, the pair is
the same function (and gets the same gradients) as one merged table, which is what a plain
`CLIPModel` holds (`merge_two_tables`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..errors import ClipforgeError

LONG_CLIP_KEEP = 20
LONG_CLIP_FACTOR = 4


def stretch_table(table: Tensor, keep: int = LONG_CLIP_KEEP, factor: int = LONG_CLIP_FACTOR) -> Tensor:
    """Long-CLIP's stretched position table [keep + factor·(L − keep), d] of a table [L, d]."""
    n, _ = table.shape
    if factor < 1:
        raise ClipforgeError(f"stretch factor must be at least 1, got {factor}")
    if not 0 <= keep <= n - 2:
        raise ClipforgeError(f"keep must lie in [0, {n - 2}] for a {n}-position table, got {keep}")
    t = table.detach().double()
    r = torch.arange(factor, dtype=torch.float64).div(factor).view(1, factor, 1)  # r/factor
    lo, hi = t[keep:n - 1].unsqueeze(1), t[keep + 1:n].unsqueeze(1)  # [L-keep-1, 1, d]
    inner = ((1 - r) * lo + r * hi).reshape(-1, t.shape[1])
    tail = t[n - 1] + r.view(factor, 1) * (t[n - 1] - t[n - 2])
    return torch.cat([t[:keep], inner, tail]).to(table.dtype)


def merge_two_tables(first: Tensor, second: Tensor, split: int = LONG_CLIP_KEEP) -> Tensor:
    """One table equal to the released two-table layout: rows < `split` from `first`, the rest from `second`."""
    if first.shape != second.shape:
        raise ClipforgeError(f"the two position tables differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    return torch.cat([first[:split], second[split:]])


def stretch_text_positions(model: nn.Module, keep: int = LONG_CLIP_KEEP, factor: int = LONG_CLIP_FACTOR) -> nn.Module:
    """A copy of a CLIP (or text tower, dense or MoE) whose text context is stretched Long-CLIP style.

    Only the text position table changes (and `max_position_embeddings` with it); every other weight is
    copied. Captions up to the new context then read interpolated positions instead of being cut.
    """
    text = getattr(model, "text_model", None)
    if text is None:
        raise ClipforgeError(f"{type(model).__name__} has no text tower to stretch")
    emb = text.embeddings
    if hasattr(emb, "position_embedding_res"):
        raise ClipforgeError("this model already has Long-CLIP's two position tables (it is stretched)")
    new_table = stretch_table(emb.position_embedding.weight, keep, factor)
    out = copy.deepcopy(model)
    n = new_table.shape[0]
    emb_out = out.text_model.embeddings
    emb_out.position_embedding = nn.Embedding(n, new_table.shape[1]).to(new_table.dtype)
    with torch.no_grad():
        emb_out.position_embedding.weight.copy_(new_table)
    emb_out.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
    sub = getattr(out.config, "text_config", None) or out.config
    sub.max_position_embeddings = n
    if sub is not out.config:  # transformers also reads the top-level sub-config for CLIPModel
        out.text_model.config.max_position_embeddings = n
    return out
