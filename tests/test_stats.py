"""The SE-aware verdict rule on synthetic numbers (clipforge.stats)."""

from __future__ import annotations

import math

import pytest

from clipforge.stats import binomial_se, decide, difference, seed_se


def test_binomial_se_is_the_textbook_one():
    assert binomial_se(0.04, 1000) == pytest.approx(math.sqrt(0.04 * 0.96 / 1000))  # ≈ 0.0062: 0.6 points
    assert binomial_se(0.0, 10) == 0.0 and binomial_se(0.5, 100) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        binomial_se(0.5, 0)


def test_one_seed_gets_the_binomial_se_of_the_difference():
    d = difference([0.05], 0.04, n_items=1000)
    assert d.diff == pytest.approx(0.01) and d.se_seeds == 0.0
    assert d.se == pytest.approx(math.sqrt(0.05 * 0.95 / 1000 + 0.04 * 0.96 / 1000))  # ≈ 0.0093
    # +1.0 point on 1,000 items is inside two SEs; on 50,000 items it is not
    assert not decide(d, "above")
    assert decide(difference([0.05], 0.04, n_items=50_000), "above")


def test_seeds_add_their_spread():
    a, b = [0.30, 0.32, 0.34], [0.28, 0.28, 0.28]
    d = difference(a, b)
    assert d.diff == pytest.approx(0.04) and d.se == pytest.approx(seed_se([0.02, 0.04, 0.06]))
    assert d.se == pytest.approx(0.02 / math.sqrt(3))
    both = difference(a, b, n_items=5000)
    assert both.se == pytest.approx(math.sqrt(d.se ** 2 + both.se_items ** 2)) and both.se > d.se
    assert "3 seeds, 5,000 items" in both.text() and both.text().startswith("+4.0 ±")


@pytest.mark.parametrize("diff, se, kind, margin, holds", [
    (0.03, 0.01, "above", 0.0, True),  # 3 SE above 0
    (0.019, 0.01, "above", 0.0, False),  # 1.9 SE: not beyond the noise
    (-0.005, 0.002, "within", 0.01, True),  # at worst −0.9 points, inside the 1-point margin
    (-0.005, 0.004, "within", 0.01, False),  # could be −1.3 points
    (-0.05, 0.01, "below", 0.01, True),  # surely more than 1 point down
    (-0.02, 0.01, "below", 0.01, False),
])
def test_decide_needs_two_standard_errors(diff, se, kind, margin, holds):
    assert decide((diff, se), kind, margin) is holds


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        decide((0.1, 0.0), "sideways")
