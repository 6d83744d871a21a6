"""Compute matching and family costs (README beside run.py, docs/methods.md B.6).

FLOPs are analytic and the same formula `clipforge.learngene.pipeline.pretrain` records: per sample
3 × the student's forward plus, when it distils, one forward of the ancestry (`clipforge.cost`), at the
caption tokens a batch of the pre-training data really holds. A method's family FLOPs are its
extraction (learngene methods, counted once) plus the pre-training of every depth.

Storage: parameters kept to produce every descendant. Learngene methods: the learngene; PT-FT: its
CLIP of each depth; the inheritance baselines and feature KD: the ancestry (needed to make a new
descendant); Scratch: nothing. A second ratio counts transformer-block parameters alone, since the
49,408-row token table sits in the learngene and in every descendant alike.
"""

from __future__ import annotations

from typing import Any

from clipforge.cost import flops_per_sample, forward_flops

from .methods import LEARNGENE_METHODS


def flops_per_step(config: Any, ancestry_config: Any, tokens: float, batch: int, distils: bool) -> float:
    """Training FLOPs of one optimizer step of a CLIP of `config` (the teacher's forward when it distils)."""
    student = forward_flops(config, "clip", tokens)
    teacher = flops_per_sample(ancestry_config, "clip", tokens) if distils else 0
    return batch * (3 * student + teacher)


def depth_shares(ptft_flops: dict[int, float]) -> dict[int, float]:
    """PT-FT's share of C at each depth: how every method splits its family budget over the depths."""
    total = sum(ptft_flops.values())
    return {d: f / total for d, f in ptft_flops.items()}


def steps_for(budget_flops: float, per_step: float) -> int:
    """As many whole steps as the budget allows (at least one)."""
    return max(1, int(budget_flops // per_step))


def storage(method: str, learngene_params: dict[str, dict[str, int]], ptft_params: dict[str, int],
            ancestry_params: dict[str, int]) -> dict[str, int]:
    """{"total", "blocks"} parameters a method keeps to make the family."""
    if method in LEARNGENE_METHODS:
        return learngene_params[method]
    if method == "ptft":
        return ptft_params
    if method == "scratch":
        return {"total": 0, "blocks": 0}
    return ancestry_params


def family_cost(method: str, runs: dict[int, dict[str, Any]], extraction: dict[str, Any] | None) -> dict[str, Any]:
    """FLOPs and wall time of a method's family at one compute point (pre-training runs + its extraction)."""
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
