"""The v2 results, built from the unit records; every verdict by `clipforge.stats` (docs/design.md 5d).

    python -m benchmarks.clipmoe.report [--out DIR]   # results.md and plots again from DIR/results.json
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipforge import stats

from .. import harness
from .bench import Budget
from .units import BASE_SCALE, BOUND, CLIP_MOE, UPCYCLING, WITHOUT_MCL, Unit

FFN_T, FULL_T, FFN_S, FULL_S = "direct FT (FFN, T)", "direct FT (full, T)", "direct FT (FFN, S)", "direct FT (full, S)"
DENSE, FMNIST = "dense_t2i_r1", "fmnist_acc1"
# "keeps" / "within" claims: 2 points, not 1. The rule adds both models' binomial SEs, so on 10,000 Fashion-MNIST
# images (or 5,000 scenes at R@1 ~ 10 %) a difference has an SE of ~0.6-0.8 points and "within 1 point" could
# hold only for a measured gain; within 2 points holds for a measured change above about -0.4 points.
KEEP = 0.02
# (group, claim, a, b, metric, kind, margin): a − b decided by stats.decide beyond two standard errors
CLAIMS = [
    ("premise", "direct FT (full, T) raises dense T→I R@1 over the base (paper: COCO T2I 35.4 → 44.5)",
     FULL_T, "base", DENSE, "above", 0.0),
    ("premise", "direct FT (full, T) loses Fashion-MNIST zero-shot by more than 1 point (paper: ImageNet 75.5 → 59.8)",
     FULL_T, "base", FMNIST, "below", 0.01),
    ("CLIP-MoE", "CLIP-MoE raises dense T→I R@1 over the base (paper: 35.4 → 46.8)", CLIP_MOE, "base", DENSE,
     "above", 0.0),
    ("CLIP-MoE", "CLIP-MoE keeps Fashion-MNIST zero-shot within 2 points of the base (paper: 74.6 vs 75.5)",
     CLIP_MOE, "base", FMNIST, "within", KEEP),
    ("parameter-matched", "CLIP-MoE beats direct FT of the FFNs at T on dense T→I R@1", CLIP_MOE, FFN_T, DENSE,
     "above", 0.0),
    ("parameter-matched", "CLIP-MoE beats direct FT of the FFNs at S (data-matched per expert, the paper's Table 4 "
     "model) on dense T→I R@1", CLIP_MOE, FFN_S, DENSE, "above", 0.0),
    ("parameter-matched", "CLIP-MoE beats direct FT of the FFNs at T on Fashion-MNIST zero-shot", CLIP_MOE, FFN_T,
     FMNIST, "above", 0.0),
    ("compute-matched", "CLIP-MoE beats direct FT (full, T) on dense T→I R@1 (paper Table 2: 46.8 vs 44.5)",
     CLIP_MOE, FULL_T, DENSE, "above", 0.0),
    ("compute-matched", "CLIP-MoE beats direct FT (full, T) on Fashion-MNIST zero-shot (paper: 74.6 vs 59.8)",
     CLIP_MOE, FULL_T, FMNIST, "above", 0.0),
    ("compute-matched", "CLIP-MoE beats sparse upcycling (T) on dense T→I R@1 (paper: 46.8 vs 45.2)", CLIP_MOE,
     UPCYCLING, DENSE, "above", 0.0),
    ("compute-matched", "CLIP-MoE beats sparse upcycling (T) on Fashion-MNIST zero-shot (paper: 74.6 vs 62.5)",
     CLIP_MOE, UPCYCLING, FMNIST, "above", 0.0),
    ("ablation", "CLIP-MoE beats w/o MCL (4 experts, one cluster per stage) on dense T→I R@1 (paper Table 4)",
     CLIP_MOE, WITHOUT_MCL, DENSE, "above", 0.0),
    ("ablation", "the experts hold more than the base: their embedding mean raises dense T→I R@1 over it", BOUND,
     "base", DENSE, "above", 0.0),
    ("ablation", "CLIP-MoE's routers recover what the experts hold: within 2 points of their embedding mean on "
     "dense T→I R@1", CLIP_MOE, BOUND, DENSE, "within", KEEP),
    ("ablation", "fixing the logit scale at the base's learned value instead of 100 raises CLIP-MoE's dense T→I R@1",
     BASE_SCALE, CLIP_MOE, DENSE, "above", 0.0),
    # the recipe the ablation points to (clipforge.moe.recipe's default, the demo's): the same claims again
    ("base logit scale", "CLIP-MoE (base logit scale) raises dense T→I R@1 over the base", BASE_SCALE, "base", DENSE,
     "above", 0.0),
    ("base logit scale", "CLIP-MoE (base logit scale) keeps Fashion-MNIST zero-shot within 2 points of the base",
     BASE_SCALE, "base", FMNIST, "within", KEEP),
    ("base logit scale", "CLIP-MoE (base logit scale) beats direct FT of the FFNs at T on dense T→I R@1", BASE_SCALE,
     FFN_T, DENSE, "above", 0.0),
    ("base logit scale", "CLIP-MoE (base logit scale) beats direct FT (full, T) on dense T→I R@1", BASE_SCALE, FULL_T,
     DENSE, "above", 0.0),
    ("base logit scale", "CLIP-MoE (base logit scale) beats direct FT (full, T) on Fashion-MNIST zero-shot",
     BASE_SCALE, FULL_T, FMNIST, "above", 0.0),
    ("base logit scale", "CLIP-MoE (base logit scale) beats sparse upcycling (T) on dense T→I R@1", BASE_SCALE,
     UPCYCLING, DENSE, "above", 0.0),
] + [("Table 1", f"CLIP-MoE raises MMVP {a} over the base", CLIP_MOE, "base", f"mmvp_{a}", "above", 0.0)
     for a in ("binding", "relation", "count")]
# the side-by-side table: (comparison, matched how, b)
SIDE_BY_SIDE = [("vs direct FT of the FFNs at T", "parameters and compute", FFN_T),
                ("vs direct FT of the FFNs at S", "parameters; data per expert", FFN_S),
                ("vs direct FT (full) at T", "compute", FULL_T),
                ("vs direct FT (full) at S", "data per expert", FULL_S),
                ("vs sparse upcycling at T", "compute (stored parameters too)", UPCYCLING),
                ("vs w/o MCL (4 experts)", "the same pipeline, one cluster per stage", WITHOUT_MCL),
                ("vs the experts' embedding mean", "an upper bound, E dense passes", BOUND)]
ATTRS = ["colour", "shape", "size", "fill", "position", "orientation", "count", "binding", "relation"]

Table = dict[str, dict[int, dict[str, float]]]  # model -> seed -> headline


def items_of(metric: str, items: dict[str, int]) -> int:
    """The test items a metric is a fraction of."""
    return items["fmnist"] if metric.startswith("fmnist") else items["mmvp"] if metric.startswith("mmvp") \
        else items["retrieval"]


def compare(table: Table, base: dict[str, float], a: str, b: str, metric: str, items: dict[str, int]
            ) -> tuple[stats.Difference, list[int]] | None:
    """a − b on `metric`, paired by seed (b may be "base", one value); None when either is missing."""
    if a not in table or (b != "base" and b not in table):
        return None
    seeds = sorted(s for s in table[a] if metric in table[a][s] and (
        metric in base if b == "base" else s in table[b] and metric in table[b][s]))
    if not seeds:
        return None
    va = [table[a][s][metric] for s in seeds]
    vb: list[float] | float = base[metric] if b == "base" else [table[b][s][metric] for s in seeds]
    return stats.difference(va, vb, items_of(metric, items)), seeds


def verdict(claim: str, a: str, b: str, metric: str, kind: str, margin: float, table: Table,
            base: dict[str, float], items: dict[str, int]) -> dict[str, Any] | None:
    """One claim decided by the one rule, with its figures."""
    got = compare(table, base, a, b, metric, items)
    if got is None:
        return None
    d, seeds = got
    holds = stats.decide(d, kind, margin)
    return {"claim": claim, "holds": holds, "a": a, "b": b, "metric": metric, "kind": kind, "margin": margin,
            "diff": d.diff, "se": d.se, "seeds": seeds, "items": d.items,
            "line": f"{claim}: {stats.outcome(holds)} ({a} − {b} on {metric}: {d.text()}, seeds {seeds})"}


def verdicts(table: Table, base: dict[str, float], items: dict[str, int]) -> list[dict[str, Any]]:
    """Every claim of `CLAIMS` whose models were measured, then Table 1's."""
    out = []
    for group, claim, a, b, metric, kind, margin in CLAIMS:
        v = verdict(claim, a, b, metric, kind, margin, table, base, items)
        if v is not None:
            out.append({"group": group, **v})
    t1 = stage_winners(table, items)
    if t1 is not None:
        out.append({"group": "Table 1", **t1})
    return out


def stage_winners(table: Table, items: dict[str, int]) -> dict[str, Any] | None:
    """Table 1: per attribute, the best stage model by its mean against the runner-up (above beyond two SEs);
    the claim holds when at least two different stages are clearly best on some attribute."""
    stages = sorted(k for k in table if k.startswith("stage"))
    if len(stages) < 2:
        return None
    clear = {}
    for attr in ATTRS:
        m = f"mmvp_{attr}"
        ranked = sorted(stages, key=lambda st: -stats.mean([u[m] for u in table[st].values()]))
        got = compare(table, {}, ranked[0], ranked[1], m, items)
        if got is not None and stats.decide(got[0], "above"):
            clear[attr] = (ranked[0], got[0].text())
    holds = len({st for st, _ in clear.values()}) >= 2
    shown = "; ".join(f"{a}: {st} by {txt}" for a, (st, txt) in clear.items()) or "no attribute has a clear best stage"
    claim = ("Table 1: different stage models are clearly best (beyond two SEs over the runner-up) on different "
             "attributes")
    return {"claim": claim, "holds": holds, "clear": {a: st for a, (st, _) in clear.items()},
            "line": f"{claim}: {stats.outcome(holds)} ({shown})"}


def routing_verdict(routing: dict[str, Any] | None) -> dict[str, Any] | None:
    """Fig. 3: every expert takes at least 10 % of the top-k slots in some block (shares over many tokens)."""
    if not routing:
        return None
    lows = {}
    for tower in ("vision", "text"):
        slots = routing[tower]["share"]  # [slot][block][expert]
        share = [[sum(sl[b][e] for sl in slots) / len(slots) for e in range(routing["num_experts"])]
                 for b in range(len(slots[0]))]
        lows[tower] = min(max(row[e] for row in share) for e in range(routing["num_experts"]))
    holds = min(lows.values()) >= 0.10
    claim = "Fig. 3: every expert takes at least 10 % of the top-k slots in some block"
    return {"group": "Fig. 3", "claim": claim, "holds": holds, "min_max_share": lows,
            "line": f"{claim}: {stats.outcome(holds)} (least-used expert's best block: vision "
                    f"{100 * lows['vision']:.1f} %, text {100 * lows['text']:.1f} %; seed {routing.get('seed', 0)}, "
                    f"{routing.get('samples')} held-out scenes, {routing['text'].get('tokens', 0):,} text tokens)"}


def diagnostic(diag: Table, main: Table, base: dict[str, float], items: dict[str, int], params: tuple[str, ...]
               ) -> dict[str, Any]:
    """Which channel full fine-tuning's gain comes through: each variant's gain over the base and its distance
    to full FT's, paired over the diagnostic seeds."""
    rows, lines = {}, []
    full = "FT full"
    for p in params:
        name = f"FT {p}"
        if name not in diag:
            continue
        gain = compare(diag, base, name, "base", DENSE, items)
        row = {"metrics": aggregate(diag[name]), "gain": _pair(gain), "seeds": sorted(diag[name])}
        v = verdict(f"diagnostic: FT {p} raises dense T→I R@1 over the base", name, "base", DENSE, "above", 0.0, diag,
                    base, items)
        lines.append(v)
        if p != "full" and full in diag:
            row["vs_full"] = _pair(compare(diag, base, name, full, DENSE, items))
            lines.append(verdict(f"diagnostic: FT {p} reaches full FT's dense T→I R@1 within 2 points", name, full,
                                 DENSE, "within", KEEP, diag, base, items))
        fm = compare(diag, base, name, "base", FMNIST, items)
        row["fmnist_change"] = _pair(fm)
        rows[p] = row
    return {"rows": rows, "verdicts": [v for v in lines if v is not None]}


def _pair(got: tuple[stats.Difference, list[int]] | None) -> dict[str, Any] | None:
    if got is None:
        return None
    d, seeds = got
    return {"diff": d.diff, "se": d.se, "seeds": seeds, "text": d.text()}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample std over seeds of every metric."""
    keys = sorted({k for h in per_seed.values() for k in h})
    out = {}
    for k in keys:
        vals = [h[k] for h in per_seed.values() if k in h]
        m = stats.mean(vals)
        sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
        out[k] = {"mean": m, "std": sd, "n": len(vals)}
    return out


def tables(records: dict[str, dict[str, Any]], units: list[Unit]) -> tuple[Table, Table, dict[str, Any]]:
    """The main table's and the diagnostic's headlines per model and seed, and each seeded model's first record
    (costs, stages)."""
    main: Table = {}
    diag: Table = {}
    first: dict[str, Any] = {}
    for u in sorted(units, key=lambda u: -1 if u.seed is None else u.seed):  # the first seed's record comes first
        if u.seed is None or u.name not in records:
            continue
        rec = records[u.name]
        for model, m in rec["models"].items():
            (diag if u.part == "diagnostic" else main).setdefault(model, {})[u.seed] = m["headline"]
            trained = not model.startswith("stage") and model != BOUND  # what the unit trained, not its by-products
            first.setdefault(model, {"cost": m.get("cost"), "stages": rec.get("stages") if trained else None,
                                     "train_s": [], "routing": rec.get("routing")})
            if "train_s" in rec and trained:
                first[model]["train_s"].append(rec["train_s"])
    return main, diag, first


def build(budget: Budget, records: dict[str, dict[str, Any]], units: list[Unit], command: str, wall: float,
          ancestry: str) -> dict[str, Any]:
    """results.json's record: tables aggregated over seeds, the diagnostic, every verdict."""
    base_rec = records["base"]["models"]
    base = base_rec["base"]["headline"]
    items = records["base"]["items"]
    main, diag, first = tables(records, units)
    routing = first.get(CLIP_MOE, {}).get("routing")
    out_main = {name: {"metrics": {k: {"mean": v, "std": 0.0, "n": 1} for k, v in m["headline"].items()},
                       "cost": m.get("cost")} for name, m in base_rec.items()}
    for name, per_seed in main.items():
        f = first[name]
        out_main[name] = {"metrics": aggregate(per_seed), "cost": f["cost"], "seeds": sorted(per_seed),
                          "train_s": stats.mean(f["train_s"]) if f["train_s"] else None, "stages": f["stages"]}
    vs = verdicts(main, base, items)
    fig3 = routing_verdict(routing)
    side = [{"comparison": c, "matched": how, "b": b,
             **{m: _pair(compare(main, base, CLIP_MOE, b, m, items)) for m in (DENSE, "dense_i2t_r1", FMNIST)}}
            for c, how, b in SIDE_BY_SIDE if b in main]
    return {"protocol": "v2", "command": command, "wall_time_s": wall, "ancestry": ancestry,
            "ancestry_check": records.get("ancestry"), "budget": asdict(budget), "derived": budget.derived(),
            "items": items, "verdicts": vs + ([fig3] if fig3 else []), "side_by_side": side,
            "diagnostic": diagnostic(diag, main, base, items, budget.diag_params), "main": out_main,
            "routing": routing,
            "units": {u.name: {k: records[u.name].get(k) for k in ("wall_time_s", "train_s", "eval_s", "threads")}
                      for u in units if u.name in records}}


def render(results: dict[str, Any], out: Path) -> None:
    """results.md and the plots in `out`, from the result record."""
    from .render import markdown, plots

    harness.write_markdown(out, markdown(results))
    plots(results, out)


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md and the plots from a results directory's results.json."""
    return harness.report_main("clipmoe", render, argv)


if __name__ == "__main__":
    sys.exit(main())
