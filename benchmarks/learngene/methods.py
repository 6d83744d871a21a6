"""The ways to make a descendant, the recipe each is pre-trained with, and the extraction recipes.

Every method yields a CLIP of depths (d, d) with the ancestry's block shape, so all methods share one
architecture per depth. Vision-only and text-only descendants are that CLIP's towers (`tower`): for the
learngene methods before pre-training this is exactly `descend(learngene, d, d, "vision" | "text")`.
Every ancestry-initialised method copies the ancestry's non-block parts (embeddings, norms,
projections) and pre-trains by the same recipe (SWS's: KD from the ancestry, a lower lr, no warm-up);
the randomly initialised ones (PT-FT, Scratch, FD) pre-train contrastively with warm-up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from clipforge.learngene import (
    Distill,
    Learngene,
    Shape,
    auto_lg,
    descend,
    heur_lg,
    scratch,
    tinyclip,
    weight_selection,
)
from clipforge.models.registry import MODEL_CLASSES, tower_config

LEARNGENE_METHODS = ("mmlg", "tleg_per_tower", "shared_only")
INHERIT_METHODS = ("tinyclip", "weight_selection", "heur_lg", "auto_lg")
# Compared at F = C / ratio (PT-FT is the reference at C; Scratch at C would be PT-FT itself).
METHODS = LEARNGENE_METHODS + ("scratch", "feature_kd") + INHERIT_METHODS
ALL = ("ptft",) + METHODS
LABELS = {"mmlg": "MM-LG", "scratch": "Scratch", "ptft": "PT-FT", "heur_lg": "Heur-LG", "auto_lg": "Auto-LG",
          "tleg_per_tower": "TLEG-per-tower", "shared_only": "Shared-only", "tinyclip": "TinyCLIP-style",
          "weight_selection": "Weight selection", "feature_kd": "Feature KD"}
DESCRIPTIONS = {
    "ptft": "random init, contrastive pre-training of each depth until its plateau rule fires: defines C",
    "mmlg": "descended from the MM-LG learngene (shared multimodal + per-tower unimodal blocks, least-squares "
            "init from the ancestry, the chosen extraction recipe), then the KD recipe",
    "tleg_per_tower": "descended from a TLEG learngene per tower (no shared block), same init and recipes",
    "shared_only": "descended from a learngene with one shared block pair (no unimodal block), same init and recipes",
    "scratch": "random init, contrastive pre-training with the same family compute",
    "feature_kd": "random init, InfoNCE + β·MSE to the ancestry's embeddings (CLIP-KD's feature distillation)",
    "tinyclip": "TinyCLIP-style weight inheritance (ancestry blocks floor(i·L/d)) + affinity-mimicking KD",
    "weight_selection": "weight selection (the first d ancestry blocks; elements selected uniformly if narrower) + KD",
    "heur_lg": "the ancestry's last k blocks per tower on random lower blocks, then KD",
    "auto_lg": "the k ancestry blocks with the highest Block Influence on one batch, then KD",
}

# Extraction recipes: `Distill` fields, whether the Aux-Net depth is sampled over the benchmark's depths,
# and the learngene's stages (more stages fit the ancestry far better at step 0 and store more:
# results/step0*/step0.md).
RECIPES: dict[str, dict[str, Any]] = {
    "kd": {"distill": Distill(alpha=1.0)},
    "kd+feature": {"distill": Distill(alpha=1.0, beta=1.0)},
    "kd+infonce-tied": {"distill": Distill(alpha=0.5, tie_temperature=True)},
    "kd+feature+depths": {"distill": Distill(alpha=1.0, beta=1.0), "sample_depths": True},
    "kd+stages4": {"distill": Distill(alpha=1.0), "stages": 4},
}
# Descendant pre-training: ancestry-initialised runs distil (half KD, half InfoNCE); TinyCLIP's own
# affinity mimicking is pure KD; FD is InfoNCE plus the feature term; the rest contrastive.
KD_RECIPE = Distill(alpha=0.5)


def pretrain_objective(method: str, fd_beta: float) -> Distill | None:
    """The distillation a method's pre-training uses (None: plain InfoNCE)."""
    if method in ("ptft", "scratch"):
        return None
    if method == "feature_kd":
        return Distill(alpha=0.0, beta=fd_beta, feature="mse")
    if method == "tinyclip":
        return Distill(alpha=1.0)
    return KD_RECIPE


def uses_sws_schedule(method: str) -> bool:
    """Ancestry-initialised runs take the lower lr without warm-up."""
    return method in LEARNGENE_METHODS + INHERIT_METHODS


def initialise(method: str, depth: int, *, learngenes: dict[str, Learngene], ancestry: nn.Module, shape_of: Any,
               k: int, probe_batch: dict[str, torch.Tensor], seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """(CLIP of depths (depth, depth), record of how it was made). `shape_of(depth)` gives the `CLIPConfig`."""
    if method in LEARNGENE_METHODS:
        lg = learngenes[method]
        return descend(lg, depth, depth, "clip"), {"method": method, "learngene_parameters": lg.num_parameters()}
    shape = Shape(shape_of(depth), "clip")
    if method in ("scratch", "ptft", "feature_kd"):
        model, rec = scratch(shape, seed=seed)
        return model, {**rec, "method": method}
    if method == "heur_lg":
        return heur_lg(ancestry, shape, k=k, seed=seed)
    if method == "auto_lg":
        return auto_lg(ancestry, shape, k=k, data=probe_batch, seed=seed)
    if method == "tinyclip":
        return tinyclip(ancestry, shape, seed=seed)
    if method == "weight_selection":
        return weight_selection(ancestry, shape, seed=seed)
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
