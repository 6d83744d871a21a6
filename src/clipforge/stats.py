"""Standard errors and the one rule every verdict is decided by (docs/design.md §5d).

A claim compares two models on one metric, a fraction of test items (accuracy, recall@k). Its difference
has two sources of noise: which test items were drawn (the binomial SE of each fraction, `n_items` items)
and how training went (the spread over seeds). `difference` combines them: the seeds' standard error of the
mean paired difference, plus the binomial variance of the difference of the two means (treated as
independent samples, which overstates it for paired items: the rule errs towards "does not hold").

`decide` is the rule: "above" holds only when the difference exceeds the margin by two standard errors,
"within" (not worse than −margin) only when the difference minus two standard errors stays above −margin,
"below" only when the difference plus two standard errors stays below −margin. With one seed the SE is
the binomial one alone, so a demo's single run still says when its test set cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("above", "within", "below")


def binomial_se(p: float, n: int) -> float:
    """Standard error of a fraction `p` measured on `n` independent items."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    p = min(max(float(p), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def seed_se(values: Sequence[float]) -> float:
    """Standard error of the mean over seeds (sample std, ddof 1, / sqrt(n)); 0 for one value."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


@dataclass(frozen=True)
class Difference:
    """a − b with its standard error and where the error comes from."""

    diff: float
    se: float
    se_seeds: float
    se_items: float
    seeds: int
    items: int | None

    def text(self, scale: float = 100.0, unit: str = "pts") -> str:
        """"+1.2 ± 0.4 pts (3 seeds, 5,000 items)"."""
        where = [f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"]
        if self.items:
            where.append(f"{self.items:,} items")
        return f"{scale * self.diff:+.1f} ± {scale * self.se:.1f} {unit} ({', '.join(where)})"


def difference(a: Sequence[float], b: Sequence[float] | float, n_items: int | None = None) -> Difference:
    """a − b for per-seed values `a` and `b` (paired by position; `b` may be one value, e.g. the base), each a
    fraction of `n_items` test items (None: the seed spread alone)."""
    a = [float(x) for x in a]
    b_list = [float(b)] * len(a) if isinstance(b, (int, float)) else [float(x) for x in b]
    if not a or len(a) != len(b_list):
        raise ValueError(f"difference needs paired values, got {len(a)} and {len(b_list)}")
    d = [x - y for x, y in zip(a, b_list, strict=True)]
    s_seeds = seed_se(d)
    s_items = 0.0
    if n_items:
        # the mean over seeds of a fraction on the same items keeps the items' binomial variance
        s_items = math.sqrt(binomial_se(mean(a), n_items) ** 2 + binomial_se(mean(b_list), n_items) ** 2)
    return Difference(mean(d), math.sqrt(s_seeds ** 2 + s_items ** 2), s_seeds, s_items, len(d), n_items)


def decide(d: Difference | tuple[float, float], kind: str = "above", margin: float = 0.0) -> bool:
    """The rule: does the claim hold beyond two standard errors? (`kind`: above / within / below)."""
    diff, se = (d.diff, d.se) if isinstance(d, Difference) else d
    if kind == "above":
        return diff - 2 * se > margin
    if kind == "within":
        return diff - 2 * se > -margin
    if kind == "below":
        return diff + 2 * se < -margin
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def outcome(holds: bool) -> str:
    return "holds" if holds else "does not hold"
