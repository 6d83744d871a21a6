"""Compute matching, family costs and storage (README beside run.py, docs/methods.md B.6).

FLOPs are analytic (`clipforge.cost`), per sample at the caption tokens a batch of the pre-training data
really holds, and count what a run reads, as the first protocol did: 3 × the student's forward, plus one
forward of every frozen ancestry tower the step reads: a distilling CLIP reads the whole ancestry; a
vision- or text-only student always reads the ancestry's other tower (its contrastive partner, LiT-style)
and, when it distils or matches features, the ancestry's own tower of its kind too. The benchmark caches
the ancestry's embeddings of its pre-training pool (`teacher.py`), so those forwards are computed once:
the cache saves wall time only, and every run is still charged for every ancestry forward it reads
(conservative for the distilling methods, MM-LG among them).

C is the sum of PT-FT's FLOPs over the family's members. A method's family budget F (C / ratio, or C)
is split over the members in PT-FT's proportions, after a learngene method's extraction (counted once
for the family at each point); each run takes as many whole steps as its FLOPs per step allow.

Storage: parameters kept to make the family. The headline counts transformer-block parameters; the
49,408-row token table (one per text tower kept) and the other non-block tensors are shown apart.
"""

from __future__ import annotations

from typing import Any

from clipforge.cost import flops_per_sample, forward_flops
from clipforge.learngene import Distill

from .family import Member


def reads_own_tower(objective: Distill | None) -> bool:
    """Whether a one-tower student's objective reads the ancestry's tower of its own kind (KD or features)."""
    return objective is not None and (objective.alpha > 0 or objective.beta > 0)


def flops_per_sample_trained(member: Member, config: Any, ancestry_config: Any, tokens: float,
                             objective: Distill | None) -> float:
    """Training FLOPs of one sample for `member` (HF config `config`) under `objective` (None: InfoNCE)."""
    student = 3 * forward_flops(config, member.kind, tokens)
    t = round(tokens)
    if member.kind == "clip":
        return student + (flops_per_sample(ancestry_config, "clip", t) if objective is not None else 0)
    other = "text" if member.kind == "vision" else "image"
    same = "image" if member.kind == "vision" else "text"
    extra = flops_per_sample(ancestry_config, other, t)
    if reads_own_tower(objective):
        extra += flops_per_sample(ancestry_config, same, t)
    return student + extra


def shares(ptft_flops: dict[str, float]) -> dict[str, float]:
    """PT-FT's share of C per member: how every method splits its family budget."""
    total = sum(ptft_flops.values())
    return {name: f / total for name, f in ptft_flops.items()}


def steps_for(budget_flops: float, per_step: float) -> int:
    """As many whole steps as the budget allows (at least one)."""
    return max(1, int(budget_flops // per_step))


def member_budgets(point_flops: float, extraction_flops: float, member_shares: dict[str, float]) -> dict[str, float]:
    """FLOPs per member at a family budget of `point_flops`, after an extraction counted once for the family."""
    left = max(point_flops - extraction_flops, 0.0)
    return {name: left * s for name, s in member_shares.items()}


def extraction_steps(ancestry_samples: int, fraction: float, batch: int) -> int:
    """The extraction's step budget: `fraction` of the samples the ancestry trained on, in batches."""
    return max(1, round(fraction * ancestry_samples / batch))


def storage(method: str, kept: dict[str, dict[str, int]]) -> dict[str, int]:
    """{"blocks", "token_table", "other", "total"} parameters a method keeps to make the family.

    `kept`: "learngene:<method>" (a learngene's counts), "ptft" (PT-FT's family, summed), "ancestry";
    inheriting baselines and feature KD keep the ancestry (a new descendant needs it); Scratch nothing."""
    if f"learngene:{method}" in kept:
        return kept[f"learngene:{method}"]
    if method == "ptft":
        return kept["ptft"]
    if method == "scratch":
        return {"blocks": 0, "token_table": 0, "other": 0, "total": 0}
    return kept["ancestry"]


def parameter_split(named: list[tuple[str, int]]) -> dict[str, int]:
    """Parameter counts split into transformer blocks, the token table and the rest (each tensor once)."""
    blocks = sum(n for k, n in named if ".encoder.layers." in k or k.startswith(("theta_", "blocks.")))
    table = sum(n for k, n in named if k.endswith("token_embedding.weight") or k.endswith("text_token_embedding"))
    total = sum(n for _, n in named)
    return {"blocks": blocks, "token_table": table, "other": total - blocks - table, "total": total}


def family_cost(runs: dict[str, dict[str, Any]], extraction: dict[str, Any] | None) -> dict[str, Any]:
    """FLOPs and wall time of a method's family at one point (every member's pre-training + its extraction)."""
    flops = sum(r["flops"] for r in runs.values())
    wall = sum(r["wall_time_s"] for r in runs.values())
    out: dict[str, Any] = {"pretrain_flops": flops, "pretrain_wall_time_s": round(wall, 2)}
    if extraction is not None:
        out["extraction_flops"] = extraction["flops"]
        out["extraction_wall_time_s"] = extraction["wall_time_s"]
        flops += extraction["flops"]
        wall += extraction["wall_time_s"]
    out["family_flops"], out["family_wall_time_s"] = flops, round(wall, 2)
    return out
