"""`Plateau`: the stated rule that ends a run when its evaluated metric stops improving (`train(until=...)`).

The rule (docs/design.md, "Runs that end at a plateau"): the run stops after an evaluation at which the
best value of `metric` seen so far has not risen by at least `min_delta` (absolute) over the best value
`patience` evaluations earlier, provided at least `min_evals` evaluations exist. Higher is better. The
rule reads only the evaluation history, which the training loop checkpoints, so a resumed run decides
exactly as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ClipforgeError


@dataclass(frozen=True)
class Plateau:
    """Stop when `metric`'s best so far gained less than `min_delta` over the last `patience` evaluations."""

    metric: str
    patience: int = 2
    min_delta: float = 0.005
    min_evals: int = 3

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_evals < 1 or self.min_delta < 0:
            raise ClipforgeError(f"plateau needs patience >= 1, min_evals >= 1 and min_delta >= 0, got {self}")

    def __call__(self, history: list[tuple[int, dict[str, Any]]]) -> bool:
        values = [m[self.metric] for _, m in history if self.metric in m]
        if len(values) < max(self.min_evals, self.patience + 1):
            return False
        best_then = max(values[:-self.patience])
        best_now = max(values)
        return best_now - best_then < self.min_delta

    def describe(self) -> str:
        return (f"stop after an evaluation at which the best {self.metric} so far rose by less than "
                f"{self.min_delta} over the last {self.patience} evaluations (at least {self.min_evals} "
                "evaluations), or at the step budget")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
