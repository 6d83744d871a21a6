"""Storage and pre-training cost of producing the whole descendant family, per method, as in docs/methods.md B.6.

Definitions (written into results.md beside the numbers):

* storage: parameters that must be kept to produce every descendant of the benchmark (all depths and
  modalities). Learngene methods: the learngene alone. PT-FT: the sum of its pre-trained CLIP of each
  depth (the vision-only and text-only descendants are those CLIPs' towers, so they add nothing).
  Heur-LG / Auto-LG: the whole ancestry (they copy blocks from it). Scratch: nothing. Ratio = method /
  PT-FT. Because the text token embedding (49,408 × width) sits in the learngene and in every
  descendant, a second ratio counts transformer-block parameters only.
* pre-training cost: FLOPs and wall time to bring the family to the point where fine-tuning starts.
  Learngene methods: one extraction (shared by all depths; Aux-Net trained 3× forward plus one
  ancestry forward per sample) + the short pre-training of each depth. PT-FT: the full pre-training of
  each depth. Others: the short pre-training of each depth. The ancestry's own training is counted for
  no method (every method but Scratch and PT-FT relies on it). FLOPs are analytic
  (`clipforge.cost.flops_per_sample`, samples seen × 3 × forward, caption tokens as actually processed);
  wall time is measured, evaluation excluded. Ratio = PT-FT / method (how many times cheaper).
"""

from __future__ import annotations

from typing import Any

from .methods import LEARNGENE_METHODS, METHODS


def family_costs(extractions: dict[str, dict[str, Any]], pretrained: dict[str, dict[int, dict[str, Any]]],
                 learngene_params: dict[str, dict[str, int]], ancestry_params: dict[str, int]) -> dict[str, Any]:
    """Per method: storage (total and block-only), FLOPs and wall time, and their ratios to PT-FT.

    `extractions[m]`: {"flops", "wall_time_s"}; `pretrained[m][depth]`: {"flops", "wall_time_s", "params",
    "block_params"}; `learngene_params[m]`: {"total", "blocks"}; `ancestry_params`: {"total", "blocks"}.
    """
    out: dict[str, Any] = {}
    for m in METHODS:
        runs = pretrained[m].values()
        flops = sum(r["flops"] for r in runs)
        wall = sum(r["wall_time_s"] for r in runs)
        if m in LEARNGENE_METHODS:
            flops += extractions[m]["flops"]
            wall += extractions[m]["wall_time_s"]
            storage = learngene_params[m]
        elif m == "ptft":
            storage = {"total": sum(r["params"] for r in runs), "blocks": sum(r["block_params"] for r in runs)}
        elif m == "scratch":
            storage = {"total": 0, "blocks": 0}
        else:
            storage = dict(ancestry_params)
        out[m] = {"storage_params": storage["total"], "storage_block_params": storage["blocks"],
                  "pretrain_flops": flops, "pretrain_wall_time_s": round(wall, 2)}
        if m in LEARNGENE_METHODS:
            out[m]["extraction_flops"] = extractions[m]["flops"]
            out[m]["extraction_wall_time_s"] = extractions[m]["wall_time_s"]
    ref = out["ptft"]
    for m, c in out.items():
        c["storage_ratio_vs_ptft"] = c["storage_params"] / ref["storage_params"]
        c["block_storage_ratio_vs_ptft"] = c["storage_block_params"] / ref["storage_block_params"]
        c["cost_ratio_flops_ptft_over_method"] = (ref["pretrain_flops"] / c["pretrain_flops"]
                                                  if c["pretrain_flops"] else None)
        c["cost_ratio_wall_ptft_over_method"] = (ref["pretrain_wall_time_s"] / c["pretrain_wall_time_s"]
                                                 if c["pretrain_wall_time_s"] else None)
    return out


def steps_to_target(curves: dict[str, dict[int, list[list[Any]]]], metric: str = "scenes_mean_r1") -> dict[str, Any]:
    """Per depth: target = PT-FT's value after its full P steps; for every method the first evaluated
    pre-training step at which its curve reaches the target (None: not within its budget), and the
    PT-FT step at which PT-FT first matches the method's own final value ("PT-FT-equivalent steps")."""
    out: dict[str, Any] = {}
    for depth in sorted(curves["ptft"]):
        ptft = [(s, v[metric]) for s, v in curves["ptft"][depth]]
        target = ptft[-1][1]
        row: dict[str, Any] = {"target": target}
        for m in METHODS:
            pts = [(s, v[metric]) for s, v in curves[m][depth]]
            reach = next((s for s, v in pts if v >= target), None)
            final = pts[-1][1]
            equiv = next((s for s, v in ptft if v >= final), None)
            row[m] = {"steps_to_target": reach, "final": final, "ptft_equivalent_steps": equiv}
        out[str(depth)] = row
    return out
