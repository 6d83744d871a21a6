"""Least-squares initialisation of a learngene from its ancestry (docs/methods.md B.3b).

A learngene of schedule (a, b) writes layer l of a depth-L tower m as a(l, L)·first_m + b(l, L)·second_m
(`LearngeneConfig`). Given an ancestry with the learngene's block shape, every ancestry layer W^m_l is
one such equation at the ancestry's own depth L_m; the unknowns of a stage are the roles its layers
use (in "mmlg": the shared θ_MM and θ_U^vision, θ_U^text). Per stage and block tensor we solve

    min  Σ_m Σ_{l in stage} ‖a(l, L_m)·first_m + b(l, L_m)·second_m − W^m_l‖²

elementwise: the design matrix (one row per ancestry layer, one column per role) is the same for every
element, so one pseudo-inverse serves the whole tensor. When the ancestry's layers lie on the basis
(W^m_l = A + (l/L)·B^m for "linear") the fit reproduces them exactly; otherwise it is the closest
learngene in the Frobenius sense. Underdetermined stages (fewer layers than roles) take the minimum-norm
solution. A stage no ancestry layer maps to (more stages than ancestry layers) is fitted to all the
tower's layers instead, as the "mean" init does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ClipforgeError
from .blocks import BLOCK_PARTS, block_param_name
from .config import TOWERS


def _float(c: Any) -> float:
    return float(c.detach()) if isinstance(c, torch.Tensor) else float(c)


@torch.no_grad()
def fit_to_ancestry(learngene: nn.Module, ancestry: nn.Module) -> dict[str, Any]:
    """Set the learngene's block tensors to the least-squares fit of the ancestry's layers; return residuals.

    Non-block parts are not touched here (`Learngene` copies them). The record holds, per tower, the
    relative residual ‖fit − W‖ / ‖W‖ over all block tensors of that tower, and the design's rank per stage.
    """
    cfg = learngene.config
    state = ancestry.state_dict()
    depths = {t: getattr(ancestry.config, f"{t}_config").num_hidden_layers for t in TOWERS}
    roles = sorted(learngene.blocks)
    index = {r: i for i, r in enumerate(roles)}
    err = {t: 0.0 for t in TOWERS}
    norm = {t: 0.0 for t in TOWERS}
    ranks: list[int] = []
    for s in range(cfg.num_stages):
        rows = [(t, i) for t in TOWERS for i in range(depths[t]) if cfg.stage(i, depths[t]) == s]
        counted = bool(rows)  # a fallback stage's rows are already in the residual once
        if not rows:  # stage unused at the ancestry's depth
            rows = [(t, i) for t in TOWERS for i in range(depths[t])]
        design = torch.zeros(len(rows), len(roles), dtype=torch.float64)
        for r, (t, i) in enumerate(rows):
            a, b = learngene.coefficients(t, i, depths[t])
            first, second = learngene.roles(t)
            design[r, index[first]] += _float(a)
            design[r, index[second]] += _float(b)
        used = [j for j in range(len(roles)) if design[:, j].abs().sum() > 0]
        sub = design[:, used]
        ranks.append(int(torch.linalg.matrix_rank(sub)))
        pinv = torch.linalg.pinv(sub)  # (roles used, rows)
        for key, part in BLOCK_PARTS.items():
            names = [block_param_name(t, i, part) for t, i in rows]
            target = learngene.blocks[roles[used[0]]][s][key]
            for n in names:
                if state[n].shape != target.shape:
                    raise ClipforgeError(f"ancestry block tensor {n} has shape {tuple(state[n].shape)}, the "
                                         f"learngene needs {tuple(target.shape)}: least-squares init needs "
                                         "the ancestry's block shape")
            w = torch.stack([state[n].double().reshape(-1) for n in names])  # (rows, numel)
            theta = pinv @ w
            for j, col in enumerate(used):
                learngene.blocks[roles[col]][s][key].copy_(theta[j].reshape(target.shape).float())
            fit = sub @ theta
            for r, (t, _) in enumerate(rows if counted else ()):
                err[t] += float((fit[r] - w[r]).square().sum())
                norm[t] += float(w[r].square().sum())
        for j in range(len(roles)):
            if j not in used:  # a role no equation reaches (cannot happen for the built-in modes)
                for p in learngene.blocks[roles[j]][s].values():
                    p.zero_()
    return {"method": "least squares over the schedule's basis", "design_rank": ranks,
            "relative_residual": {t: (err[t] / norm[t]) ** 0.5 if norm[t] else 0.0 for t in TOWERS}}
