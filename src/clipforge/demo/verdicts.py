"""Verdicts: the claims a demo run tests, each decided from the run's own numbers.

A verdict is a method, a claim, whether it holds, and the figures it was decided from. Everything here
is a pure function of the records `demo.measure.measure` returns (`record["headline"]`: fractions in
[0, 1]; `record["cost"]`: parameter counts), so a test can hand in synthetic numbers. A claim whose
records the run did not measure (no Scratch model, no alt-text retrieval, ...) is skipped, never guessed.

Records are found by the names `demo.pipeline` gives them: "ancestry", "CLIP-MoE", "MM-LG clip 2+2",
"MM-LG vision 2", "CLIP-MoE of MM-LG clip 2+2", "direct FT (full)" (the ancestry fine-tuned directly, the
CLIP-MoE's baseline at equal steps); a Scratch baseline of a descendant is expected under the descendant's
name with "MM-LG" replaced by "Scratch" ("Scratch clip 2+2"), trained for the descendant's FLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Records = Mapping[str, Mapping[str, Any]]

# --- the claims' thresholds (points are percentage points) -----------------------------------------
ZEROSHOT_TOLERANCE_PTS = 1.0  # "keeps zero-shot": at most this many points below its base
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


def pts(d: float) -> str:
    """A difference of fractions in signed percentage points: 0.012 → "+1.2 pts"."""
    return f"{100 * d:+.1f} pts"


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
                     prefix: str = "") -> Verdict | None:
    """Does `model` beat `base` on R@1 of one caption style, in both directions? None if not measured."""
    keys = {d: f"{prefix}{d}_r1" for d in DIRECTIONS}
    m, b = model["headline"], base["headline"]
    if any(k not in m or k not in b for k in keys.values()):
        return None
    holds = all(100 * (m[k] - b[k]) > RETRIEVAL_GAIN_PTS + _EPS for k in keys.values())
    figures = "; ".join(f"{DIRECTIONS[d]} R@1 {pct(b[k])} → {pct(m[k])} ({pts(m[k] - b[k])})" for d, k in keys.items())
    return Verdict(method, f"raises {RETRIEVAL_STYLES[prefix]} retrieval R@1 over {base_name} in both directions",
                   holds, figures)


def keeps_zeroshot(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any]) -> Verdict | None:
    """Is `model`'s Fashion-MNIST zero-shot at most ZEROSHOT_TOLERANCE_PTS below `base`'s? None if not measured."""
    m, b = model["headline"].get("fmnist_acc1"), base["headline"].get("fmnist_acc1")
    if m is None or b is None:
        return None
    holds = 100 * (m - b) >= -ZEROSHOT_TOLERANCE_PTS - _EPS
    return Verdict(method, f"keeps Fashion-MNIST zero-shot within {ZEROSHOT_TOLERANCE_PTS:g} point of {base_name}",
                   holds, f"top-1 {pct(b)} → {pct(m)} ({pts(m - b)})")


def _params(rec: Mapping[str, Any]) -> int | None:
    return rec.get("cost", {}).get("params_stored")


def keeps_quality(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any]) -> Verdict | None:
    """Does `model` keep at least QUALITY_KEPT_MIN of `base` on every quality metric both measured?"""
    mq, bq = quality_metrics(model["headline"]), quality_metrics(base["headline"])
    shared = [k for k in mq if k in bq and bq[k] > 0]  # a ratio to 0 says nothing
    if not shared:
        return None
    kept = {k: mq[k] / bq[k] for k in shared}
    parts = [f"{k} {pct(mq[k])} vs {pct(bq[k])} ({pct(kept[k])} kept)" for k in shared]
    pm, pb = _params(model), _params(base)
    if pm and pb:
        parts.append(f"parameters {pct(pm / pb)} of {base_name}'s ({pm:,} vs {pb:,})")
    holds = all(v >= QUALITY_KEPT_MIN - _EPS for v in kept.values())
    return Verdict(method, f"keeps at least {100 * QUALITY_KEPT_MIN:.0f}% of {base_name}'s quality", holds,
                   "; ".join(parts))


def beats(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any]) -> Verdict | None:
    """Is `model` above `base` on every quality metric both measured (e.g. a descendant against Scratch)?"""
    mq, bq = quality_metrics(model["headline"]), quality_metrics(base["headline"])
    shared = [k for k in mq if k in bq]
    if not shared:
        return None
    holds = all(mq[k] > bq[k] for k in shared)
    figures = "; ".join(f"{k} {pct(bq[k])} → {pct(mq[k])} ({pts(mq[k] - bq[k])})" for k in shared)
    return Verdict(method, f"beats {base_name} (same shape, same training FLOPs)", holds, figures)


def _mean_r1(h: Mapping[str, float]) -> float | None:
    return (h["t2i_r1"] + h["i2t_r1"]) / 2 if "t2i_r1" in h and "i2t_r1" in h else None


def against_finetuning(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any]
                       ) -> list[Verdict | None]:
    """CLIP-MoE against direct fine-tuning at equal steps (paper Tables 2 and 5): retrieval on the new
    captions at least the fine-tuned model's (mean of both directions), zero-shot above it."""
    m, b = model["headline"], base["headline"]
    out: list[Verdict | None] = []
    mr, br = _mean_r1(m), _mean_r1(b)
    if mr is not None and br is not None:
        out.append(Verdict(method,
                           f"matches or beats {base_name} at equal steps on held-out scenes R@1 (mean of T→I, I→T)",
                           mr >= br - _EPS, f"{method} {pct(mr)} vs {base_name} {pct(br)} ({pts(mr - br)})"))
    if "fmnist_acc1" in m and "fmnist_acc1" in b:
        d = m["fmnist_acc1"] - b["fmnist_acc1"]
        out.append(Verdict(method, f"beats {base_name} at equal steps on Fashion-MNIST zero-shot", d > _EPS,
                           f"top-1 {method} {pct(m['fmnist_acc1'])} vs {base_name} {pct(b['fmnist_acc1'])} ({pts(d)})"))
    return out


def _grown(method: str, model: Mapping[str, Any], base_name: str, base: Mapping[str, Any]) -> list[Verdict | None]:
    """The CLIP-MoE claims against the model it was grown from: retrieval up (every style), zero-shot kept."""
    return [raises_retrieval(method, model, base_name, base, p) for p in RETRIEVAL_STYLES] + [
        keeps_zeroshot(method, model, base_name, base)]


def verdicts(records: Records) -> list[Verdict]:
    """Every claim this run's records can decide: CLIP-MoE vs the ancestry and vs direct fine-tuning, MM-LG
    descendants vs the ancestry (and vs Scratch where measured), each composed model vs its seed descendant."""
    out: list[Verdict | None] = []
    anc = records.get(ANCESTRY)
    if anc is not None and CLIP_MOE in records:
        out += _grown(CLIP_MOE, records[CLIP_MOE], "the ancestry", anc)
    if anc is not None and DIRECT_FT in records:  # the premise: fine-tuning gains retrieval, loses zero-shot
        out += [raises_retrieval(DIRECT_FT, records[DIRECT_FT], "the ancestry", anc),
                keeps_zeroshot(DIRECT_FT, records[DIRECT_FT], "the ancestry", anc)]
    if CLIP_MOE in records and DIRECT_FT in records:
        out += against_finetuning(CLIP_MOE, records[CLIP_MOE], DIRECT_FT, records[DIRECT_FT])
    for name, rec in records.items():
        if not name.startswith(MMLG_PREFIX):
            continue
        if anc is not None:
            out.append(keeps_quality(name, rec, "the ancestry", anc))
        scratch = SCRATCH_PREFIX + name.removeprefix(MMLG_PREFIX)
        if scratch in records:
            out.append(beats(name, rec, scratch, records[scratch]))
    for name, rec in records.items():
        seed = name.removeprefix(COMPOSED_PREFIX)
        if name.startswith(COMPOSED_PREFIX) and seed in records:
            out += _grown(name, rec, f"its seed {seed}", records[seed])
    return [v for v in out if v is not None]


def verdict_lines(records: Records, markup: bool = False) -> list[str]:
    """The verdicts as lines of text (see `Verdict.line`)."""
    return [v.line(markup) for v in verdicts(records)]


def thresholds() -> str:
    """The thresholds the claims use, in one sentence for the report."""
    return (f"Thresholds: \"within {ZEROSHOT_TOLERANCE_PTS:g} point\" allows a drop of at most "
            f"{ZEROSHOT_TOLERANCE_PTS:g} percentage point; \"raises\" needs a gain above {RETRIEVAL_GAIN_PTS:g} points "
            f"in each direction; \"keeps quality\" needs at least {100 * QUALITY_KEPT_MIN:.0f}% of the reference on "
            "every metric both models were measured on.")
