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

Towers of different widths. A tensor shared by both towers is stored at the wider tower's shape and
read by the narrower one through a co-isometry C (`widths.TowerMap`, C Cᵀ = I). The problem splits in
two elementwise problems of the same form: in the coordinates the narrower tower sees (C of every
wider-tower layer, the narrower tower's layers as they are) over both towers' rows, and in the rest
(W − CᵀC W of the wider tower's layers) over the wider tower's rows only. A tensor stored at the wider
shape is Cᵀ(its first solution) + its second; one of the narrower tower is its first solution. When
the ancestry's layers lie on the construction's basis the fit reproduces them exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks import BLOCK_PARTS, block_param_name
from .config import TOWERS


def _float(c: Any) -> float:
    return float(c.detach()) if isinstance(c, torch.Tensor) else float(c)


class _Solver:
    """Elementwise least squares for one design (one row per ancestry layer, one column per role): its
    pseudo-inverse is computed once and serves every block tensor of the stage."""

    def __init__(self, learngene: nn.Module, rows: list[tuple[str, int]], depths: dict[str, int],
                 roles: list[str]) -> None:
        index = {r: i for i, r in enumerate(roles)}
        design = torch.zeros(len(rows), len(roles), dtype=torch.float64)
        for r, (t, i) in enumerate(rows):
            a, b = learngene.coefficients(t, i, depths[t])
            first, second = learngene.roles(t)
            design[r, index[first]] += _float(a)
            design[r, index[second]] += _float(b)
        self.rows, used = rows, [j for j in range(len(roles)) if design[:, j].abs().sum() > 0]
        self.roles = [roles[j] for j in used]
        sub = design[:, used]
        self.pinv, self.rank = torch.linalg.pinv(sub), int(torch.linalg.matrix_rank(sub))

    def solve(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{role: θ (flattened)} for the rows' targets, in the order of `rows`."""
        w = torch.stack([t.double().reshape(-1) for t in targets])  # (rows, numel)
        return dict(zip(self.roles, self.pinv @ w, strict=True))


@torch.no_grad()
def fit_to_ancestry(learngene: nn.Module, state: dict[str, torch.Tensor], depths: dict[str, int]) -> dict[str, Any]:
    """Set the learngene's block tensors to the least-squares fit of the ancestry's layers; return residuals.

    `state`: the ancestry's tensors cut to the learngene's tower shapes (`learngene.narrowed_state`), `depths`
    its tower depths. Non-block parts are not touched here (`Learngene` copies them). The record holds, per
    tower, the relative residual ‖fit − W‖ / ‖W‖ over all block tensors of that tower, and the design's
    rank per stage.
    """
    cfg = learngene.config
    all_roles = sorted(learngene.blocks)
    # Without a shared role the towers are separate problems (their shapes may differ).
    groups = [(TOWERS, all_roles)] if learngene.shared else \
        [((t,), [r for r in all_roles if r in learngene.roles(t)]) for t in TOWERS]
    narrow = learngene.mapped[0] if learngene.mapped else None
    wide = next(t for t in TOWERS if t != narrow) if narrow else None
    ranks: list[int] = []
    for s in range(cfg.num_stages):
        for towers, roles in groups:
            rows = [(t, i) for t in towers for i in range(depths[t]) if cfg.stage(i, depths[t]) == s]
            rows = rows or [(t, i) for t in towers for i in range(depths[t])]  # stage unused at this depth
            seen = _Solver(learngene, rows, depths, roles)
            wide_rows = [(t, i) for t, i in rows if t == wide]
            rest = _Solver(learngene, wide_rows, depths, [r for r in roles if r in learngene.roles(wide)]) \
                if narrow and wide_rows else None
            for key, part in BLOCK_PARTS.items():
                _fit_tensor(learngene, s, key, roles, {row: state[block_param_name(*row, part)] for row in rows},
                            seen, rest)
            ranks.append(seen.rank)
    return {"method": "least squares over the schedule's basis", "design_rank": ranks,
            "relative_residual": residuals(learngene, state, depths)}


def _fit_tensor(learngene: nn.Module, s: int, key: str, roles: list[str], w: dict[tuple[str, int], torch.Tensor],
                seen_solver: _Solver, rest_solver: _Solver | None) -> None:
    """Fit block tensor `key` of stage `s` of `roles` to the ancestry layers `w` (by row)."""
    narrow = learngene.mapped[0] if learngene.mapped else None
    cmap = learngene.tower_map(narrow) if narrow else None
    # coordinates the narrower tower sees (all of them without a map); the rest only the wider one sees
    seen = {row: (cmap.apply(key, x) if cmap is not None and row[0] != narrow else x) for row, x in w.items()}
    solution = seen_solver.solve([seen[row] for row in seen_solver.rows])
    rest = {} if rest_solver is None else rest_solver.solve(
        [w[row] - cmap.adjoint(key, seen[row]) for row in rest_solver.rows])
    wide_roles = set(learngene.roles(next(t for t in TOWERS if t != narrow))) if narrow else set()
    shape = seen[seen_solver.rows[0]].shape
    for role in roles:
        p = learngene.blocks[role][s][key]
        value = solution.get(role)
        if value is None:  # a role no equation reaches (cannot happen for the built-in modes)
            p.zero_()
            continue
        if cmap is not None and role in wide_roles:
            # stored at the wider shape: Cᵀ(the narrower tower's view) + the rest
            value = cmap.adjoint(key, value.reshape(shape)).reshape(-1)
            value = value + rest[role] if role in rest else value
        p.copy_(value.reshape(p.shape).float())


@torch.no_grad()
def residuals(learngene: nn.Module, state: dict[str, torch.Tensor], depths: dict[str, int]) -> dict[str, float]:
    """Per tower, ‖learngene's layers at the ancestry's depth − the ancestry's‖ / ‖the ancestry's‖."""
    out = {}
    for t in TOWERS:
        err = norm = 0.0
        for i in range(depths[t]):
            for key, part in BLOCK_PARTS.items():
                target = state[block_param_name(t, i, part)].double()
                err += float((learngene.block_weight(t, i, depths[t], key).double() - target).square().sum())
                norm += float(target.square().sum())
        out[t] = (err / norm) ** 0.5 if norm else 0.0
    return out
