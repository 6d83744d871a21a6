"""Verdicts: the claims a demo run tests, each decided from the run's own numbers.

A verdict is a method, a claim, whether it holds, and the figures it was decided from. Everything here
is a pure function of the records `demo.measure.measure` returns (`record["headline"]`: fractions in
[0, 1]; `record["cost"]`: parameter counts) and of how many test items each metric was measured on
(`items`), so a test can hand in synthetic numbers. A claim holds only beyond two standard errors of its
difference (`clipforge.stats`, docs/design.md 5d): the demo runs one seed, so the SE is the binomial one of
its test items, and each line prints it. A claim whose records the run did not measure (no Scratch
model, no alt-text retrieval, ...) is skipped, never guessed.

Records are found by the names `demo.pipeline` gives them: "ancestry", "CLIP-MoE", "MM-LG clip 2+2",
"MM-LG vision 2", "CLIP-MoE of MM-LG clip 2+2", "direct FT (full)" (the ancestry fine-tuned directly, the
CLIP-MoE's baseline at equal steps); a Scratch baseline of a descendant is expected under the descendant's
name with "MM-LG" replaced by "Scratch" ("Scratch clip 2+2"), trained for the descendant's FLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..stats import Difference, decide, difference

Records = Mapping[str, Mapping[str, Any]]
Items = Mapping[str, int]  # test items per metric family: "scenes", "fmnist", "count" (absent: SE from seeds only)

# headline key → the family of test items it is a fraction of
ITEM_FAMILY = {"fmnist_acc1": "fmnist", "fmnist_probe_acc1": "fmnist", "count_probe_acc1": "count"}

# --- the claims' thresholds (points are percentage points) -----------------------------------------
# "keeps zero-shot": at most this many points below its base, beyond two SEs. Two points, as in
# benchmarks/clipmoe's "within" claims: on 10,000 Fashion-MNIST images the difference of two models has a
# binomial SE near 0.65 points, so "within 1 point" could hold only for a measured gain.
ZEROSHOT_TOLERANCE_PTS = 2.0
RETRIEVAL_GAIN_PTS = 0.0  # "raises retrieval": above its base by more than this, in each direction
QUALITY_KEPT_MIN = 0.90  # "keeps the ancestry's quality": each shared metric at least this fraction of it

ANCESTRY = "ancestry"
CLIP_MOE = "CLIP-MoE"
DIRECT_FT = "direct FT (full)"
COMPOSED_PREFIX = "CLIP-MoE of "
MMLG_PREFIX = "MM-LG "
SCRATCH_PREFIX = "Scratch "

# headline key prefix → the captions that retrieval was measured on (suite tasks scenes_retrieval[_alt|_dense])
RETRIEVAL_STYLES = {"": "held-out scenes", "alt_": "alt-text scenes", "dense_": "dense-caption scenes"}
DIRECTIONS = {"t2i": "T→I", "i2t": "I→T"}
_EPS = 1e-9  # fractions go through 100 * x: a tie at a threshold must not fail on rounding


@dataclass(frozen=True)
class Verdict:
    """One claim about one method, decided from `figures`."""

    method: str
    claim: str
    holds: bool
    figures: str

    @property
    def outcome(self) -> str:
        return "holds" if self.holds else "does not hold"

    def line(self, markup: bool = True) -> str:
        """"method: claim: holds (figures)", the outcome in **bold** when `markup`."""
        outcome = f"**{self.outcome}**" if markup else self.outcome
        return f"{self.method}: {self.claim}: {outcome} ({self.figures})"


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal: 0.1234 → "12.3%"."""
    return f"{100 * x:.1f}%"


def pts(d: float | Difference) -> str:
    """A difference of fractions in signed percentage points: 0.012 → "+1.2 pts"; with its standard error
    when it has one: "+1.2 ± 0.6 pts"."""
    if isinstance(d, Difference):
        return f"{100 * d.diff:+.1f} ± {100 * d.se:.1f} pts" if d.se > 0 else f"{100 * d.diff:+.1f} pts"
    return f"{100 * d:+.1f} pts"


def n_items(key: str, items: Items | None) -> int | None:
    """How many test items headline metric `key` (or a `quality_metrics` name) was measured on."""
    if not items:
        return None
    if key in QUALITY_ITEMS:
        return items.get(QUALITY_ITEMS[key])
    return items.get(ITEM_FAMILY.get(key, "scenes" if "_r" in key else ""))


def diff(m: float, b: float, key: str, items: Items | None) -> Difference:
    """m − b, one seed each, with the binomial SE of `key`'s test items."""
    return difference([m], b, n_items(key, items))


QUALITY_ITEMS = {"scenes R@1 (mean of T→I, I→T)": "scenes", "Fashion-MNIST zero-shot": "fmnist",
                 "Fashion-MNIST linear probe": "fmnist", "count probe (text)": "count"}


def quality_metrics(headline: Mapping[str, float]) -> dict[str, float]:
    """The headline numbers a model's quality is judged on, by human name (only those measured)."""
    out: dict[str, float] = {}
    if "t2i_r1" in headline and "i2t_r1" in headline:
        out["scenes R@1 (mean of T→I, I→T)"] = (headline["t2i_r1"] + headline["i2t_r1"]) / 2
    for key, name in (("fmnist_acc1", "Fashion-MNIST zero-shot"), ("fmnist_probe_acc1", "Fashion-MNIST linear probe"),
                      ("count_probe_acc1", "count probe (text)")):
        if key in headline:
            out[name] = headline[key]
    return out


def raises_retrieval(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
                     prefix: str = "", items: Items | None = None) -> Verdict | None:
    """Does `model` beat `base` on R@1 of one caption style, in both directions, beyond two SEs? None if not
    measured."""
    keys = {d: f"{prefix}{d}_r1" for d in DIRECTIONS}
    m, b = model["headline"], base["headline"]
    if any(k not in m or k not in b for k in keys.values()):
        return None
    ds = {k: diff(m[k], b[k], k, items) for k in keys.values()}
    holds = all(decide(d, "above", RETRIEVAL_GAIN_PTS / 100) for d in ds.values())
    figures = "; ".join(f"{DIRECTIONS[d]} R@1 {pct(b[k])} → {pct(m[k])} ({pts(ds[k])})" for d, k in keys.items())
    return Verdict(method, f"raises {RETRIEVAL_STYLES[prefix]} retrieval R@1 over {base_name} in both directions",
                   holds, figures)


def keeps_zeroshot(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
                   items: Items | None = None) -> Verdict | None:
    """Is `model`'s Fashion-MNIST zero-shot no more than ZEROSHOT_TOLERANCE_PTS below `base`'s, by two SEs?"""
    m, b = model["headline"].get("fmnist_acc1"), base["headline"].get("fmnist_acc1")
    if m is None or b is None:
        return None
    d = diff(m, b, "fmnist_acc1", items)
    holds = decide((d.diff + _EPS, d.se), "within", ZEROSHOT_TOLERANCE_PTS / 100) if d.se > 0 \
        else 100 * d.diff >= -ZEROSHOT_TOLERANCE_PTS - _EPS  # no SE: a drop of exactly the tolerance is kept
    return Verdict(method, f"keeps Fashion-MNIST zero-shot within {ZEROSHOT_TOLERANCE_PTS:g} points of {base_name}",
                   holds, f"top-1 {pct(b)} → {pct(m)} ({pts(d)})")


def _params(rec: Mapping[str, Any]) -> int | None:
    return rec.get("cost", {}).get("params_stored")


def _kept(m: float, b: float, name: str, items: Items | None) -> tuple[bool, float]:
    """Whether m ≥ QUALITY_KEPT_MIN · b beyond two SEs, and the SE of the kept fraction m / b."""
    n = n_items(name, items)
    if not n:
        return m / b >= QUALITY_KEPT_MIN - _EPS, 0.0
    from ..stats import binomial_se

    se = (binomial_se(m, n) ** 2 + (QUALITY_KEPT_MIN * binomial_se(b, n)) ** 2) ** 0.5
    return decide((m - QUALITY_KEPT_MIN * b, se), "above"), se / b


def keeps_quality(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
                  items: Items | None = None) -> Verdict | None:
    """Does `model` keep at least QUALITY_KEPT_MIN of `base`, beyond two SEs, on every metric both measured?"""
    mq, bq = quality_metrics(model["headline"]), quality_metrics(base["headline"])
    shared = [k for k in mq if k in bq and bq[k] > 0]  # a ratio to 0 says nothing
    if not shared:
        return None
    decided = {k: _kept(mq[k], bq[k], k, items) for k in shared}
    parts = [f"{k} {pct(mq[k])} vs {pct(bq[k])} ({pct(mq[k] / bq[k])}"
             + (f" ± {100 * decided[k][1]:.1f}" if decided[k][1] else "") + " kept)" for k in shared]
    pm, pb = _params(model), _params(base)
    if pm and pb:
        parts.append(f"parameters {pct(pm / pb)} of {base_name}'s ({pm:,} vs {pb:,})")
    return Verdict(method, f"keeps at least {100 * QUALITY_KEPT_MIN:.0f}% of {base_name}'s quality",
                   all(h for h, _ in decided.values()), "; ".join(parts))


def beats(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
          items: Items | None = None) -> Verdict | None:
    """Is `model` above `base`, beyond two SEs, on every quality metric both measured (a descendant against
    Scratch)?"""
    mq, bq = quality_metrics(model["headline"]), quality_metrics(base["headline"])
    shared = [k for k in mq if k in bq]
    if not shared:
        return None
    ds = {k: diff(mq[k], bq[k], k, items) for k in shared}
    holds = all(decide(d, "above") for d in ds.values())
    figures = "; ".join(f"{k} {pct(bq[k])} → {pct(mq[k])} ({pts(ds[k])})" for k in shared)
    return Verdict(method, f"beats {base_name} (same shape, same training FLOPs)", holds, figures)


def _mean_r1(h: Mapping[str, float]) -> float | None:
    return (h["t2i_r1"] + h["i2t_r1"]) / 2 if "t2i_r1" in h and "i2t_r1" in h else None


def against_finetuning(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
                       items: Items | None = None) -> list[Verdict | None]:
    """CLIP-MoE against direct fine-tuning at equal steps (paper Tables 2 and 5): retrieval on the new
    captions (mean of both directions) and zero-shot above the fine-tuned model's, beyond two SEs."""
    m, b = model["headline"], base["headline"]
    out: list[Verdict | None] = []
    mr, br = _mean_r1(m), _mean_r1(b)
    if mr is not None and br is not None:
        d = diff(mr, br, "t2i_r1", items)
        out.append(Verdict(method, f"beats {base_name} at equal steps on held-out scenes R@1 (mean of T→I, I→T)",
                           decide(d, "above"), f"{method} {pct(mr)} vs {base_name} {pct(br)} ({pts(d)})"))
    if "fmnist_acc1" in m and "fmnist_acc1" in b:
        d = diff(m["fmnist_acc1"], b["fmnist_acc1"], "fmnist_acc1", items)
        out.append(Verdict(method, f"beats {base_name} at equal steps on Fashion-MNIST zero-shot", decide(d, "above"),
                           f"top-1 {method} {pct(m['fmnist_acc1'])} vs {base_name} {pct(b['fmnist_acc1'])} ({pts(d)})"))
    return out


def _grown(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any],
           items: Items | None) -> list[Verdict | None]:
    """The CLIP-MoE claims against the model it was grown from: retrieval up (every style), zero-shot kept."""
    return [raises_retrieval(method, model, base_name, base, p, items) for p in RETRIEVAL_STYLES] + [
        keeps_zeroshot(method, model, base_name, base, items)]


def verdicts(records: Records, items: Items | None = None) -> list[Verdict]:
    """Every claim this run's records can decide: CLIP-MoE vs the ancestry and vs direct fine-tuning, MM-LG
    descendants vs the ancestry (and vs Scratch where measured), each composed model vs its seed descendant.
    `items`: test items per metric family ({"scenes": 5000, "fmnist": 10000, "count": 1000}); without them a
    difference has no SE and any gain counts."""
    out: list[Verdict | None] = []
    anc = records.get(ANCESTRY)
    if anc is not None and CLIP_MOE in records:
        out += _grown(CLIP_MOE, records[CLIP_MOE], "the ancestry", anc, items)
    if anc is not None and DIRECT_FT in records:  # the premise: fine-tuning gains retrieval, loses zero-shot
        out += [raises_retrieval(DIRECT_FT, records[DIRECT_FT], "the ancestry", anc, items=items),
                keeps_zeroshot(DIRECT_FT, records[DIRECT_FT], "the ancestry", anc, items)]
    if CLIP_MOE in records and DIRECT_FT in records:
        out += against_finetuning(CLIP_MOE, records[CLIP_MOE], DIRECT_FT, records[DIRECT_FT], items)
    for name, rec in records.items():
        if not name.startswith(MMLG_PREFIX):
            continue
        if anc is not None:
            out.append(keeps_quality(name, rec, "the ancestry", anc, items))
        scratch = SCRATCH_PREFIX + name.removeprefix(MMLG_PREFIX)
        if scratch in records:
            out.append(beats(name, rec, scratch, records[scratch], items))
    for name, rec in records.items():
        seed = name.removeprefix(COMPOSED_PREFIX)
        if name.startswith(COMPOSED_PREFIX) and seed in records:
            out += _grown(name, rec, f"its seed {seed}", records[seed], items)
    return [v for v in out if v is not None]


def verdict_lines(records: Records, markup: bool = False, items: Items | None = None) -> list[str]:
    """The verdicts as lines of text (see `Verdict.line`)."""
    return [v.line(markup) for v in verdicts(records, items)]


def thresholds() -> str:
    """The thresholds the claims use, in one sentence for the report."""
    return (f"Thresholds: \"within {ZEROSHOT_TOLERANCE_PTS:g} points\" allows a drop of at most "
            f"{ZEROSHOT_TOLERANCE_PTS:g} percentage points; \"raises\" and \"beats\" need a gain above "
            f"{RETRIEVAL_GAIN_PTS:g} points (in each direction, for retrieval); \"keeps quality\" needs at least "
            f"{100 * QUALITY_KEPT_MIN:.0f}% of the reference on every metric both models were measured on. Each "
            "holds only beyond two standard errors of its difference (± after each difference: the binomial SE of "
            "this run's test items, one seed; docs/design.md 5d), so a difference inside the noise does not hold.")
