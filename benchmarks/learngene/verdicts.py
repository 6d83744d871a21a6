"""One verdict per claim, by clipforge's one rule (`clipforge.stats`, docs/design.md 5d).

A claim compares two (method, compute point) pairs on one downstream task over the members of that task's
kind: the values are paired by (depth, seed), the same member and fine-tuning seed for both methods, and
`stats.difference(a, b, n_items)` adds the spread of those paired differences to the binomial SE of the
test items (n_items = the task's test set). "beats" holds only when the difference exceeds 0 by two
standard errors (`decide(d, "above")`). Each claim's line says on how many tasks it holds; one sub-line
per task gives the figures.
"""

from __future__ import annotations

from typing import Any

from clipforge.stats import Difference, decide, difference, outcome

from .methods import LABELS

# (key in a downstream record, metric, kind of member, label, budget field holding the test set's size)
TASKS = (("clip", "mean_r1", "clip", "retrieval R@1 (CLIP members)", "eval_scenes"),
         ("fashion_mnist", "acc1", "vision", "Fashion-MNIST top-1 (vision members)", "eval_classify"),
         ("mnist", "acc1", "vision", "MNIST top-1 (vision members)", "eval_classify"),
         ("text", "acc1", "text", "object count top-1 (text members, in-vocabulary captions)", "text_test"))
POINT_LABEL = {"C/ratio": "C/2.8", "C": "C"}


def rows(results: dict) -> dict[str, dict[str, dict[str, dict]]]:
    """{point: {method: {member: unit}}}, PT-FT under the point "C" (it defines C)."""
    out = {p: dict(v) for p, v in results["runs"].items()}
    out.setdefault("C", {})["ptft"] = results["ptft"]
    return out


def paired(results: dict, a: tuple[str, str], b: tuple[str, str], task: str, metric: str,
           kind: str) -> tuple[list[float], list[float]]:
    """Values of (method, point) `a` and `b` on `task`, paired by (member of `kind`, seed)."""
    r = rows(results)
    if a[0] not in r.get(a[1], {}) or b[0] not in r.get(b[1], {}):
        return [], []
    va, vb = [], []
    for name in results["members"]:
        if not name.startswith(f"{kind}-"):
            continue
        ua, ub = r[a[1]][a[0]].get(name), r[b[1]][b[0]].get(name)
        if ua is None or ub is None:  # a unit a --partial report has no record of
            continue
        da, db = ua["downstream"], ub["downstream"]
        for s in sorted(set(da) & set(db), key=int):
            va.append(da[s][task][metric])
            vb.append(db[s][task][metric])
    return va, vb


def figures(d: Difference, seeds: int) -> str:
    """"+1.2 ± 0.4 pts (SE of seeds 0.3, of items 0.3; 6 pairs = 3 depths × 2 seeds, 1,000 test items)"."""
    return (f"{100 * d.diff:+.1f} ± {100 * d.se:.1f} pts (SE of seeds {100 * d.se_seeds:.1f}, of items "
            f"{100 * d.se_items:.1f}; {d.seeds} pairs = {d.seeds // max(1, seeds)} depths × {seeds} seeds, "
            f"{d.items:,} test items)")


def claim(results: dict, text: str, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    """The claim "a beats b" on every task: its line, and one sub-line per task."""
    per_task = []
    seeds = len(results["budget"]["seeds"])
    for task, metric, kind, label, size in TASKS:
        va, vb = paired(results, a, b, task, metric, kind)
        if not va:
            continue
        d = difference(va, vb, results["budget"][size])
        holds = decide(d, "above")
        per_task.append({"task": task, "holds": holds, "diff": d.diff, "se": d.se, "se_seeds": d.se_seeds,
                         "se_items": d.se_items, "n": d.seeds, "items": d.items,
                         "line": f"{label}: {outcome(holds)} ({figures(d, seeds)})"})
    if not per_task:
        return None
    k = sum(t["holds"] for t in per_task)
    what = f"{LABELS[a[0]]} at {POINT_LABEL[a[1]]} − {LABELS[b[0]]} at {POINT_LABEL[b[1]]}"
    return {"claim": text, "holds": k == len(per_task), "tasks_held": k, "tasks": per_task,
            "line": f"{text}: {'holds' if k == len(per_task) else 'does not hold'} on {k} of {len(per_task)} "
                    f"tasks ({what}, beyond two SE)"}


def storage_claim(results: dict) -> dict[str, Any]:
    """The learngene's block parameters against PT-FT's family (paper: about 25 %), the token table apart."""
    lg, pt = results["storage"]["mmlg"], results["storage"]["ptft"]
    ratio = lg["blocks"] / pt["blocks"]
    holds = ratio <= 0.30
    return {"claim": "storage: the learngene is about a quarter of PT-FT's family (block parameters)",
            "holds": holds, "ratio": ratio,
            "line": f"storage: the MM-LG learngene holds about a quarter (≤ 30 %) of PT-FT's family in block "
                    f"parameters: {outcome(holds)} ({lg['blocks']:,} vs {pt['blocks']:,}: {100 * ratio:.1f} %; "
                    f"paper ~25 %). Token tables apart: {lg['token_table']:,} vs {pt['token_table']:,} "
                    f"(49,408 rows × width, one per text tower kept); all parameters {lg['total']:,} vs "
                    f"{pt['total']:,} ({100 * lg['total'] / pt['total']:.1f} %)"}


def verdicts(results: dict) -> list[dict[str, Any]]:
    """One verdict per claim, computed from the records."""
    out: list[dict[str, Any] | None] = []
    runs = results["runs"]
    for p in ("C/ratio", "C"):  # TLEG-per-tower is MM-LG without the multimodal block: its own claim
        if {"mmlg", "tleg_per_tower"} <= set(runs.get(p, {})):
            out.append(claim(results, f"the multimodal block helps: MM-LG beats TLEG-per-tower (its ablation) at "
                                      f"{POINT_LABEL[p]}", ("mmlg", p), ("tleg_per_tower", p)))
    for other in [m for m in runs["C/ratio"] if m not in ("mmlg", "tleg_per_tower")]:
        out.append(claim(results, f"MM-LG beats {LABELS[other]} at C/2.8", ("mmlg", "C/ratio"), (other, "C/ratio")))
    out.append(claim(results, "MM-LG at C/2.8 beats PT-FT at C (paper: +3.65 Flickr30k R@1, +1.9 Pet top-1)",
                     ("mmlg", "C/ratio"), ("ptft", "C")))
    if "scratch" in runs.get("C", {}):
        out.append(claim(results, "MM-LG at C/2.8 beats Scratch at C", ("mmlg", "C/ratio"), ("scratch", "C")))
    for other in [m for m in runs.get("C", {}) if m not in ("mmlg", "tleg_per_tower")]:
        if "mmlg" in runs["C"]:
            out.append(claim(results, f"MM-LG beats {LABELS[other]} at C", ("mmlg", "C"), (other, "C")))
    out.append(storage_claim(results))
    return [v for v in out if v is not None]
