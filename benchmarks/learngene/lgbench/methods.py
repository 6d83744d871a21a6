"""The seven ways to make a descendant, and how each is pre-trained before fine-tuning.

Every method yields a CLIP of depths (d, d) with the learngene's block shape (the ancestry's width),
so all methods share one architecture per depth. Vision-only and text-only descendants are that
CLIP's towers (`tower`): for the learngene methods before pre-training this is exactly
`descend(learngene, d, d, "vision" | "text")`, since the rule is per tower.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from clipforge.learngene import Learngene, Shape, auto_lg, descend, heur_lg, scratch
from clipforge.models.registry import MODEL_CLASSES, tower_config

METHODS = ("mmlg", "scratch", "ptft", "heur_lg", "auto_lg", "tleg_per_tower", "shared_only")
LEARNGENE_METHODS = ("mmlg", "tleg_per_tower", "shared_only")
LABELS = {"mmlg": "MM-LG", "scratch": "Scratch", "ptft": "PT-FT", "heur_lg": "Heur-LG", "auto_lg": "Auto-LG",
          "tleg_per_tower": "TLEG-per-tower", "shared_only": "Shared-only"}
DESCRIPTIONS = {
    "mmlg": "descended from the MM-LG learngene (shared multimodal + per-tower unimodal blocks), then p steps",
    "scratch": "random init (HF's, seeded), then the same p steps as the learngene descendants",
    "ptft": "random init, then a full contrastive pre-training of P steps per depth",
    "heur_lg": "the ancestry's last k blocks per tower on random lower blocks, embeddings copied, then p steps",
    "auto_lg": "the k ancestry blocks with the highest Block Influence (1 − cos(in, out)) on one batch, "
               "in order, on random lower blocks, then p steps",
    "tleg_per_tower": "descended from a TLEG learngene per tower (no shared block), then p steps",
    "shared_only": "descended from a learngene with one shared block pair (no unimodal block), then p steps",
}


def pretrain_steps(method: str, short: int, full: int) -> int:
    return full if method == "ptft" else short


def initialise(method: str, depth: int, *, learngenes: dict[str, Learngene], ancestry: nn.Module, k: int,
               probe_batch: dict[str, torch.Tensor], seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """(CLIP of depths (depth, depth), record of how it was made)."""
    if method in LEARNGENE_METHODS:
        lg = learngenes[method]
        return descend(lg, depth, depth, "clip"), {"method": method, "learngene_parameters": lg.num_parameters()}
    shape = Shape(learngenes["mmlg"].config.clip_config(depth, depth), "clip")
    if method in ("scratch", "ptft"):
        model, rec = scratch(shape, seed=seed)
        return model, {**rec, "method": method}
    if method == "heur_lg":
        return heur_lg(ancestry, shape, k=k, seed=seed)
    if method == "auto_lg":
        return auto_lg(ancestry, shape, k=k, data=probe_batch, seed=seed)
    raise ValueError(f"unknown method {method!r}")


@torch.no_grad()
def tower(clip: PreTrainedModel, kind: str) -> PreTrainedModel:
    """The vision (`CLIPVisionModelWithProjection`) or text (`CLIPTextModelWithProjection`) half of a CLIP."""
    prefix = ("vision_model.", "visual_projection.") if kind == "vision" else ("text_model.", "text_projection.")
    model = MODEL_CLASSES[kind](tower_config(clip.config, kind))
    state = {k: v for k, v in clip.state_dict().items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def block_parameters(model: nn.Module) -> int:
    """Parameters inside transformer blocks (what depth changes), each tensor once."""
    return sum(p.numel() for n, p in model.named_parameters() if ".encoder.layers." in n)
