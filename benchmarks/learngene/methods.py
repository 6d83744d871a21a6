"""The ways to make a family member, and the objective each is pre-trained with.

Every method yields the same nine shapes (family.py): CLIP, vision-only and text-only descendants at two
thirds of the ancestry's widths. The learngene methods descend them from a learngene extracted at those
widths (`descend(lg, d, d, kind)`); the inheriting baselines cut them out of the ancestry by element
selection (`clipforge.learngene.baselines`: whole heads, uniform channels); the random-init ones are HF's
init. Ancestry-initialised methods copy (a selection of) the ancestry's non-block parts and pre-train by
SWS's recipe (KD from the ancestry, a lower lr, no warm-up); the random-init ones contrastively with
warm-up. One-tower members train against the frozen ancestry's other tower (LiT-style, `TowerStep`) with
the same α / β as their CLIP siblings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from clipforge.learngene import Distill, Learngene, LearngeneConfig, Shape, auto_lg, descend, scratch, tinyclip
from clipforge.learngene import weight_selection as select_weights

from .family import Member

LEARNGENE_METHODS = ("mmlg", "tleg_per_tower")
INHERIT_METHODS = ("weight_selection", "tinyclip", "auto_lg")
RANDOM_METHODS = ("scratch", "feature_kd")
METHODS = LEARNGENE_METHODS + INHERIT_METHODS + RANDOM_METHODS  # every one at F = C / ratio
ALL = ("ptft",) + METHODS
LABELS = {"mmlg": "MM-LG", "scratch": "Scratch", "ptft": "PT-FT", "auto_lg": "Auto-LG", "heur_lg": "Heur-LG",
          "tleg_per_tower": "TLEG-per-tower", "shared_only": "Shared-only", "tinyclip": "TinyCLIP-style",
          "weight_selection": "Weight selection", "feature_kd": "Feature KD"}
DESCRIPTIONS = {
    "ptft": "random init, contrastive pre-training of each member until its plateau rule fires: defines C",
    "mmlg": "descended from the MM-LG learngene (shared multimodal + per-tower unimodal blocks at the family's "
            "widths, least-squares init from the element-selected ancestry), then the KD recipe",
    "tleg_per_tower": "descended from a TLEG learngene per tower (MM-LG without the multimodal block), same "
                      "extraction and recipe",
    "weight_selection": "Xu et al. 2024: the first d ancestry blocks, elements selected uniformly (whole heads), "
                        "then the KD recipe",
    "tinyclip": "TinyCLIP's manual inheritance: ancestry blocks floor(i·L/d) (uniform layers), elements selected "
                "as weight selection does, then affinity-mimicking KD",
    "auto_lg": "the k ancestry blocks with the highest Block Influence on one batch, on random lower blocks, "
               "elements selected, then the KD recipe",
    "scratch": "random init, contrastive pre-training with the same family compute",
    "feature_kd": "random init, InfoNCE + β·MSE to the ancestry's embeddings (CLIP-KD's feature distillation)",
}

# Descendant pre-training: ancestry-initialised runs distil (half KD, half InfoNCE); TinyCLIP's own
# affinity mimicking is pure KD; FD is InfoNCE plus the feature term; the rest contrastive.
KD_RECIPE = Distill(alpha=0.5)


def pretrain_objective(method: str, fd_beta: float) -> Distill | None:
    """The distillation a method's pre-training uses (None: plain InfoNCE, or LiT-style for one tower)."""
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


def initialise(method: str, member: Member, *, learngenes: dict[str, Learngene], ancestry: nn.Module,
               shape: LearngeneConfig, k: int, probe_batch: dict[str, torch.Tensor],
               seed: int = 0) -> tuple[PreTrainedModel, dict[str, Any]]:
    """(model of `member`'s kind and shape, record of how it was made); `shape` holds the family's widths."""
    d, kind = member.depth, member.kind
    if method in LEARNGENE_METHODS:
        lg = learngenes[method]
        return descend(lg, d, d, kind), {"method": method, "learngene_parameters": lg.num_parameters()}
    target = Shape(shape.clip_config(d, d), kind)
    if method in ("scratch", "ptft", "feature_kd"):
        model, rec = scratch(target, seed=seed)
        return model, {**rec, "method": method}
    if method == "auto_lg":
        return auto_lg(ancestry, target, k=k, data=probe_batch, seed=seed)
    if method == "tinyclip":
        return tinyclip(ancestry, target, seed=seed)
    if method == "weight_selection":
        return select_weights(ancestry, target, seed=seed)
    raise ValueError(f"unknown method {method!r}")


def named_counts(model: nn.Module) -> list[tuple[str, int]]:
    """(name, numel) of every parameter, each tensor once."""
    return [(n, p.numel()) for n, p in model.named_parameters()]
