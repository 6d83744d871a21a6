"""Tables and plots of the CLIP-MoE benchmark, rebuilt from its saved units.

    python -m benchmarks.clipmoe.report [--out DIR]   # results.md and plots again from DIR/results.json
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import harness
from .bench import Budget

MAIN_METRICS = ["fmnist_acc1", "dense_t2i_r1", "dense_t2i_r5", "dense_i2t_r1", "dense_i2t_r5", "alt_t2i_r1",
                "alt_i2t_r1", "t2i_r1", "i2t_r1", "mmvp_mean"]
HEADERS = ["FMNIST top-1", "dense T→I R@1", "dense T→I R@5", "dense I→T R@1", "dense I→T R@5", "alt T→I R@1",
           "alt I→T R@1", "full T→I R@1", "full I→T R@1", "MMVP mean"]
ATTRS = ["colour", "shape", "size", "fill", "position", "orientation", "count", "binding", "relation", "mean"]
ORDER = ["base", "direct FT (FFN)", "direct FT (full)", "sparse upcycling", "w/o MCL", "CLIP-MoE"]
# (claim, method a, method b, metric, kind, margin): "above": a − b > margin + 2 se; "within": a − b − 2 se >
# −margin; "below": a − b + 2 se < −margin. Differences are paired by seed (the base has one value).
CLAIMS = [
    ("direct FT (full) raises dense-caption T→I R@1 over the base (paper: COCO I2T 56.1 → 63.3)",
     "direct FT (full)", "base", "dense_t2i_r1", "above", 0.0),
    ("direct FT (full) loses Fashion-MNIST zero-shot, more than 1 point (paper: ImageNet 75.5 → 59.8)",
     "direct FT (full)", "base", "fmnist_acc1", "below", 0.01),
    ("CLIP-MoE raises dense-caption T→I R@1 over the base (paper: 65.0)", "CLIP-MoE", "base", "dense_t2i_r1",
     "above", 0.0),
    ("CLIP-MoE keeps Fashion-MNIST zero-shot within 1 point of the base (paper: 74.6 vs 75.5)", "CLIP-MoE", "base",
     "fmnist_acc1", "within", 0.01),
    ("CLIP-MoE beats direct FT (full) on Fashion-MNIST zero-shot", "CLIP-MoE", "direct FT (full)", "fmnist_acc1",
     "above", 0.0),
    ("CLIP-MoE beats direct FT (FFN) on dense T→I R@1", "CLIP-MoE", "direct FT (FFN)", "dense_t2i_r1", "above", 0.0),
    ("CLIP-MoE beats sparse upcycling on dense T→I R@1", "CLIP-MoE", "sparse upcycling", "dense_t2i_r1", "above", 0.0),
    ("CLIP-MoE beats sparse upcycling on Fashion-MNIST zero-shot (paper Table 5: above both baselines)",
     "CLIP-MoE", "sparse upcycling", "fmnist_acc1", "above", 0.0),
    ("CLIP-MoE beats w/o MCL on dense T→I R@1 (paper Table 4)", "CLIP-MoE", "w/o MCL", "dense_t2i_r1", "above", 0.0),
]
BASELINES = ("direct FT (FFN)", "direct FT (full)", "sparse upcycling")
RISING = ("binding", "relation", "count")  # Table 1: what dense captions teach and alt-text never said

DEFINITIONS = {
    "fmnist_acc1": "Fashion-MNIST zero-shot top-1 (prompt ensemble, CLIP_benchmark protocol), test images as budgeted: "
                   "what the ancestry knew and fine-tuning on scenes may forget (the paper's ImageNet column)",
    "dense_/alt_/full t2i_r@k, i2t_r@k": "held-out scenes (test split, seed 1, unseen shape-colour combinations) "
                                          "captioned in the dense style (what the pool teaches), the alt style (what "
                                          "the ancestry learned) and the full style; text->image and image->text "
                                          "recall@k (the paper's Flickr30k/COCO columns)",
    "mmvp_<attr>": "MMVP-style pair accuracy: two images differing in one attribute, both must pick their own "
                   "caption (chance 0.25)",
    "same steps": "every method gets T = (E-1)*S + R optimizer steps of the same global batch on the same data; "
                  "w/o MCL reuses the direct-FT (FFN) model of the same seed and trains its routers R steps",
    "mean ± std": "over seeds (sample std, ddof 1); the base has no seed",
    "params_active_per_token": "parameters a token passes through: stored minus the (E - k) unused experts per MoE "
                               "block",
    "diff ± se": "ablation: stage model minus direct FT with the same steps and trainable parameters, paired by "
                 "seed; se = std of the paired differences / sqrt(seeds); 'significant' when |diff| > 2 se",
}


def mean_std(values: list[float]) -> dict[str, float]:
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "std": s, "n": n}


def _agg(per_seed: dict[Any, dict[str, float]], keys: list[str]) -> dict[str, dict[str, float]]:
    return {k: mean_std([rec[k] for rec in per_seed.values() if k in rec]) for k in keys
            if any(k in rec for rec in per_seed.values())}


def _paired(units: dict, base: dict, a: str, b: str, metric: str) -> tuple[list[float], list[Any]]:
    """Per-seed a − b (b may be the base, one value)."""
    ua = units.get(a, {})
    ub = units.get(b, {}) if b != "base" else None
    seeds = sorted(s for s in ua if ub is None or s in ub)
    diffs = []
    for s in seeds:
        va = ua[s]["headline"].get(metric)
        vb = base["headline"].get(metric) if ub is None else ub[s]["headline"].get(metric)
        if va is not None and vb is not None:
            diffs.append(va - vb)
    return diffs, seeds


def verdicts(units: dict, base: dict, claims: list | None = None) -> list[dict[str, Any]]:
    """One verdict per claim (default `CLAIMS`), computed from the paired per-seed differences (in points of %)."""
    out = []
    for claim, a, b, metric, kind, margin in (CLAIMS if claims is None else claims):
        d, seeds = _paired(units, base, a, b, metric)
        if not d:
            continue
        ms = mean_std(d)
        se = ms["std"] / math.sqrt(len(d)) if len(d) > 1 else 0.0
        holds = {"above": ms["mean"] - 2 * se > margin, "within": ms["mean"] - 2 * se > -margin,
                 "below": ms["mean"] + 2 * se < -margin, "not_below": ms["mean"] + 2 * se >= -margin}[kind]
        out.append({"claim": claim, "holds": bool(holds), "a": a, "b": b, "metric": metric, "diff": ms["mean"],
                    "se": se, "seeds": seeds,
                    "line": f"{claim}: {'holds' if holds else 'does not hold'} ({a} − {b} on {metric}: "
                            f"{100 * ms['mean']:+.1f} ± {100 * se:.1f} points, paired over seeds {seeds}"
                            f"{'; one seed, no standard error' if len(d) == 1 else ''})"})
    return out


def claim_verdicts(units: dict, base: dict, routing: dict | None) -> list[dict[str, Any]]:
    """The claims whose comparison is chosen by the numbers: Table 2's best baseline, Table 1, Fig. 3."""
    out = []
    means = {b: mean_std([u["headline"]["dense_t2i_r1"] for u in units[b].values()])["mean"]
             for b in BASELINES if b in units}
    if means and "CLIP-MoE" in units:
        best = max(means, key=means.get)
        out += verdicts(units, base, [(
            f"Table 2: CLIP-MoE is at least the better of direct FT and sparse upcycling on dense T→I R@1 (here "
            f"{best}, the best baseline by its mean)", "CLIP-MoE", best, "dense_t2i_r1", "not_below", 0.0)])
    stages = sorted(k for k in units if k.startswith("stage"))
    attrs = [a for a in ATTRS if a not in ("colour", "mean")]  # colour sits at the ceiling for every model
    if stages:
        def stage_mean(st: str, a: str) -> float:
            return mean_std([u["headline"][f"mmvp_{a}"] for u in units[st].values()])["mean"]

        best = {a: max(stages, key=lambda st: stage_mean(st, a)) for a in attrs}
        distinct = sorted(set(best.values()))
        holds = len(distinct) >= 2
        out.append({"claim": "Table 1: the stage models are best on different attributes", "holds": holds,
                    "best": best, "line": f"Table 1: the stage models are best on different attributes: "
                    f"{'holds' if holds else 'does not hold'} ({len(distinct)} of {len(stages)} stages are the best "
                    f"on some attribute: " + ", ".join(f"{a} {st}" for a, st in best.items()) + ")"})
    if "CLIP-MoE" in units:
        out += verdicts(units, base, [(f"Table 1: CLIP-MoE raises MMVP {a} over the base", "CLIP-MoE", "base",
                                       f"mmvp_{a}", "above", 0.0) for a in RISING])
    if routing:
        lows = {}
        for tower in ("vision", "text"):
            slots = routing[tower]["share"]  # [slot][block][expert]; each row sums to 1
            blocks = range(len(slots[0]))
            # share of all top-k slots of block b taken by expert e: the mean over the slots
            share = [[sum(sl[b][e] for sl in slots) / len(slots) for e in range(routing["num_experts"])]
                     for b in blocks]
            lows[tower] = min(max(row[e] for row in share) for e in range(routing["num_experts"]))
        holds = min(lows.values()) >= 0.10
        out.append({"claim": "Fig. 3: every expert takes at least 10 % of the top-k slots in some block",
                    "holds": holds, "min_max_share": lows,
                    "line": "Fig. 3: every expert takes at least 10 % of the top-k slots in some block: "
                            f"{'holds' if holds else 'does not hold'} (least-used expert's best block: vision "
                            f"{100 * lows['vision']:.1f} %, text {100 * lows['text']:.1f} %; seed "
                            f"{routing.get('seed', 0)}, {routing.get('samples')} held-out scenes)"})
    return out


def build(budget: Budget, units: dict, base: dict, ablation: dict, work: Path, command: str, wall: float,
          ancestry: str, routing: dict | None = None) -> dict[str, Any]:
    """results.json's record: every table aggregated over seeds, the ablation's paired differences, the verdicts."""
    base_metrics = {k: {"mean": v, "std": 0.0, "n": 1} for k, v in base["headline"].items()}
    main: dict[str, Any] = {"base": {"metrics": base_metrics, "cost": base["cost"]}}
    for method, per_seed in units.items():
        if method.startswith("stage"):
            continue
        first = per_seed[min(per_seed)]
        main[method] = {"metrics": _agg({s: u["headline"] for s, u in per_seed.items()}, list(first["headline"])),
                        "cost": first.get("cost", {}), "clusters": first.get("clusters"),
                        "wall_time_s": mean_std([u["wall_time_s"] for u in per_seed.values()])}
    table1 = {"stage0 (base)": {a: {"mean": base["headline"][f"mmvp_{a}"], "std": 0.0, "n": 1} for a in ATTRS}}
    for method in sorted(k for k in units if k.startswith("stage")):
        table1[method] = _agg({s: {a: u["headline"][f"mmvp_{a}"] for a in ATTRS} for s, u in units[method].items()},
                              ATTRS)
    if "CLIP-MoE" in units:
        table1["CLIP-MoE"] = _agg({s: {a: u["headline"][f"mmvp_{a}"] for a in ATTRS}
                                   for s, u in units["CLIP-MoE"].items()}, ATTRS)
    abl: dict[str, Any] = {}
    significant = []
    for name, a in ablation.items():
        keys = [f"mmvp_{x}" for x in ATTRS] + ["t2i_r1", "i2t_r1", "fmnist_acc1"]
        seeds = sorted(set(a["stage"]) & set(a["direct_ft"]))
        diff = {}
        for k in keys:
            d = [a["stage"][s][k] - a["direct_ft"][s][k] for s in seeds]
            ms = mean_std(d)
            se = ms["std"] / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            sig = len(d) > 1 and abs(ms["mean"]) > 2 * se
            diff[k] = {"mean": ms["mean"], "se": se, "n": len(d), "significant": bool(sig)}
            if sig:
                significant.append({"setting": name, "metric": k, "diff": ms["mean"], "se": se})
        abl[name] = {k: a[k] for k in ("k", "steps", "trains", "reference")} | {
            "stage": _agg({s: a["stage"][s] for s in seeds}, keys),
            "direct_ft": _agg({s: a["direct_ft"][s] for s in seeds}, keys), "diff": diff}
    return {"command": command, "wall_time_s": wall, "ancestry": ancestry, "budget": asdict(budget),
            "definitions": DEFINITIONS, "verdicts": verdicts(units, base) + claim_verdicts(units, base, routing),
            "routing": routing, "main": main,
            "table1_stages_mmvp": table1, "ablation": abl,
            "ablation_significant": significant, "work": str(work)}


def _cell(ms: dict[str, float] | None, pct: bool = False) -> str:
    if not ms:
        return "–"
    f = 100.0 if pct else 1.0
    if ms.get("n", 1) > 1:
        return f"{f * ms['mean']:.1f} ± {f * ms['std']:.1f}" if pct else f"{ms['mean']:.3f} ± {ms['std']:.3f}"
    return f"{f * ms['mean']:.1f}" if pct else f"{ms['mean']:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """results.md: the command and budget, the verdicts, then every table."""
    b = results["budget"]
    lines = ["# CLIP-MoE benchmark in the paper's regime (miniature of its Tables 1, 2, 4, 5 and Fig. 3)", "",
             f"Made by `{results['command']}` in {results['wall_time_s'] / 60:.1f} min (units cached in "
             f"`{results['work']}` or recorded in `units/` are not re-timed; per-seed records: "
             + "; ".join(f"seed {s}: " + (f"{r['wall_time_s'] / 60:.1f} min, {r['threads']} thread(s)" if r else
                                          "wall time not recorded") for s, r in results.get("seed_runs", {}).items())
             + f"). Ancestry: `{results['ancestry']}`.", ""]
    if results.get("machine"):
        lines += [harness.machine_line(results["machine"]), ""]
    lines += [f"Budget: fine-tuning pool {b['train_scenes']:,} new scenes with {b.get('caption_style', 'full')} "
              f"captions (seed 1, unseen by the alt-caption ancestry), global batch "
              f"{b['batch']}, {b['experts']} experts top-{b['top_k']}, MCL stages of S = {b['stage_steps']} steps "
              f"(lr {b['stage_lr']}, {b['k']}x{b['k']} clusters, FFN only), routers R = {b['router_steps']} steps "
              f"(lr {b['router_lr']}, switch balance loss, alpha 0.01), baselines T = "
              f"{(b['experts'] - 1) * b['stage_steps'] + b['router_steps']} "
              f"steps (lr {b['ft_lr']}), seeds {list(b['seeds'])}. Numbers in % (mean ± std over seeds).", "",
              "## What it shows", ""] + [f"* {v['line']}" for v in results.get("verdicts", [])]
    lines += _main_tables(results["main"]) + _table1(results["table1_stages_mmvp"])
    if results["ablation"]:
        lines += _ablation_tables(results["ablation"], results["main"]["base"]["metrics"])
    lines += ["", "## Definitions", ""] + [f"* **{k}**: {v}" for k, v in results["definitions"].items()]
    lines += ["", "Plots: `plots/main.png`, `plots/table1_stages_mmvp.png`, `plots/ablation.png`, "
              "`plots/fig3_routing.png`.", ""]
    return "\n".join(lines)


def _main_tables(main: dict[str, Any]) -> list[str]:
    """The main table's quality, its cost and the clusters of the MCL stages."""
    names = [n for n in ORDER if n in main] + [n for n in main if n not in ORDER]
    quality, cost = [], []
    for name in names:
        m = main[name]
        c = m.get("cost", {})
        wall = m.get("wall_time_s")
        quality.append([name] + [_cell(m["metrics"].get(k), pct=True) for k in MAIN_METRICS])
        cost.append([name, f"{c.get('params_stored', 0):,}", f"{c.get('params_active_per_token', 0):,}",
                     f"{c.get('flops_per_image', 0) / 1e9:.3f}", f"{wall['mean']:.0f}" if wall else "–"])
    lines = ["", "## Main table (paper Tables 2, 4, 5): quality", ""] + harness.table(["model"] + HEADERS, quality)
    lines += ["", "## Cost", ""] + harness.table(
        ["model", "params stored", "active / token", "GFLOPs / image", "train wall s"], cost)
    clusters = [(n, m["clusters"]) for n, m in main.items() if m.get("clusters")]
    if clusters:
        rows = [[n, st, r.get("num", "–"), f"{r.get('size_min', '–')} / {r.get('size_median', '–')} / "
                 f"{r.get('size_max', '–')}", f"{r['mean_batches_per_cluster']:.2f}",
                 f"{100 * (r.get('dropped_share') or 0):.1f} %"] for n, rep in clusters for st, r in rep.items()]
        lines += ["", "## Clusters (seed of the first run)", ""] + harness.table(
            ["model", "stage", "clusters", "size min / median / max", "mean global batches per cluster",
             "dropped share"], rows)
    return lines


def _table1(table1: dict[str, Any]) -> list[str]:
    rows = [[name] + [_cell(row.get(a), pct=True) for a in ATTRS] for name, row in table1.items()]
    return ["", "## Table 1: MMVP-style pair accuracy of every dense MCL stage model", ""] + harness.table(
        ["model"] + ATTRS, rows)


def _ablation_tables(ablation: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Paired differences (stage − direct FT) per setting, then the same runs in absolute terms."""
    keys = [f"mmvp_{x}" for x in ATTRS] + ["t2i_r1", "fmnist_acc1"]
    rows = []
    for name, a in ablation.items():
        cells = []
        for k in keys:
            d = a["diff"][k]
            txt = f"{100 * d['mean']:+.1f} ± {100 * d['se']:.1f}" if d["n"] > 1 else f"{100 * d['mean']:+.1f}"
            cells.append(f"**{txt}**" if d["significant"] else txt)
        rows.append([name, f"{a['k']}x{a['k']}", a["steps"], a["trains"]] + cells)
    lines = ["", "## Ablation: one MCL stage vs direct FT with the same steps and trainable parameters", "",
             "Paired difference (stage − direct FT) in points, ± its standard error over seeds; **bold** when "
             "|diff| > 2 se.", ""] + harness.table(["setting", "k", "steps", "trains"] + ATTRS + ["T→I R@1", "FMNIST"],
                                                   rows)
    absolute = [["base (ancestry)"] + [_cell(base.get(k), pct=True) for k in keys]]
    for name, a in ablation.items():
        absolute.append([f"MCL stage, {name}"] + [_cell(a["stage"].get(k), pct=True) for k in keys])
        absolute.append([a["reference"]] + [_cell(a["direct_ft"].get(k), pct=True) for k in keys])
    return lines + ["", "The same runs in absolute terms (%, mean ± std over seeds), beside the base:", ""] + \
        harness.table(["model"] + ATTRS + ["T→I R@1", "FMNIST"], absolute)


def render(results: dict[str, Any], out: Path) -> None:
    """results.md and the plots in `out`, from the result record."""
    harness.write_markdown(out, markdown(results))
    plots(results, out)


def plots(results: dict[str, Any], out: Path) -> None:
    """The main table, Table 1, the ablation and Fig. 3 as PNGs in `out/plots`."""
    from clipforge.report.moe_run import plot_routing
    from clipforge.report.plots import grouped_bars

    main = results["main"]
    names = [n for n in ORDER if n in main]
    keys = ["fmnist_acc1", "dense_t2i_r1", "dense_i2t_r1", "alt_t2i_r1", "alt_i2t_r1", "mmvp_mean"]
    grouped_bars(keys, {n: [main[n]["metrics"].get(k, {}).get("mean", 0) for k in keys] for n in names},
                 out / "plots" / "main.png", title="CLIP-MoE vs baselines (mean over seeds)", ylabel="%",
                 errors={n: [main[n]["metrics"].get(k, {}).get("std", 0) for k in keys] for n in names}, percent=True)
    t1 = results["table1_stages_mmvp"]
    grouped_bars(ATTRS, {n: [row[a]["mean"] for a in ATTRS] for n, row in t1.items()},
                 out / "plots" / "table1_stages_mmvp.png", title="MMVP-style pair accuracy per MCL stage model",
                 ylabel="pair accuracy (%)", errors={n: [row[a]["std"] for a in ATTRS] for n, row in t1.items()},
                 chance=0.25, percent=True)
    if results["ablation"]:
        keys = [f"mmvp_{x}" for x in ATTRS] + ["t2i_r1"]
        grouped_bars([k.replace("mmvp_", "") for k in keys],
                     {n: [a["diff"][k]["mean"] for k in keys] for n, a in results["ablation"].items()},
                     out / "plots" / "ablation.png", title="MCL stage minus direct FT (same steps); bars: 2 se",
                     ylabel="difference", errors={n: [2 * (a["diff"][k]["se"] if a["diff"][k]["n"] > 1 else 0)
                                                      for k in keys] for n, a in results["ablation"].items()})
    if results.get("routing"):
        plot_routing(results["routing"], out / "plots" / "fig3_routing.png",
                     title="CLIP-MoE routing on held-out scenes (seed 0; paper Fig. 3)")


def routing(budget: Budget, work: Path, out: Path) -> dict[str, Any] | None:
    """Fig. 3's routing shares of the first seed's CLIP-MoE: measured if its model is here, else the committed file."""
    import json

    from clipforge.data.scenes import ScenesDataset
    from clipforge.files import write_json
    from clipforge.models import io
    from clipforge.moe.routing import routing_stats

    seed = budget.seeds[0]
    moe_dir = work / "clip_moe" / f"seed{seed}" / "model"
    path = out / "routing.json"
    if moe_dir.is_dir():
        model = io.load(moe_dir)
        size = int(model.config.vision_config.image_size)
        stats = routing_stats(model, ScenesDataset(split="test", size=min(500, budget.eval_scenes), seed=1,
                                                   image_size=size))
        stats["seed"] = seed
        write_json(path, stats)
        return stats
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md and the plots from a results directory's results.json."""
    return harness.report_main("clipmoe", render, argv)


if __name__ == "__main__":
    sys.exit(main())
