"""results.md and the plots of the v2 CLIP-MoE benchmark, from its results.json record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import harness
from .report import ATTRS, DENSE, FMNIST

ORDER = ["base", "ancestry (unstretched)", "direct FT (FFN, S)", "direct FT (FFN, T)", "direct FT (full, S)",
         "direct FT (full, T)", "sparse upcycling (T)", "w/o MCL (4 experts)", "CLIP-MoE",
         "CLIP-MoE (base logit scale)", "experts' embedding mean (bound)"]
MAIN = [("fmnist_acc1", "FMNIST top-1"), ("dense_t2i_r1", "dense T→I R@1"), ("dense_t2i_r5", "R@5"),
        ("dense_t2i_r10", "R@10"), ("dense_i2t_r1", "dense I→T R@1"), ("dense_i2t_r5", "R@5"),
        ("dense_i2t_r10", "R@10"), ("full_t2i_r1", "full T→I R@1"), ("full_i2t_r1", "full I→T R@1"),
        ("alt_t2i_r1", "alt T→I R@1"), ("alt_i2t_r1", "alt I→T R@1"), ("mmvp_mean", "MMVP mean")]
GROUPS = ["premise", "CLIP-MoE", "parameter-matched", "compute-matched", "ablation", "base logit scale", "Table 1",
          "Fig. 3"]
DEFINITIONS = {
    "S, R, T": "S = one epoch of the pool in global batches (what one MCL stage, one expert, sees: the data-matched "
               "steps), R = one router epoch, T = (E − 1)·S + R (what the whole CLIP-MoE sees: compute-matched); "
               "clipforge.moe.sizing",
    "parameter-matched": "against direct fine-tuning of the same parameters MCL trains (the FFNs of both towers)",
    "compute-matched": "against methods given the CLIP-MoE's samples: direct FT of everything at T, sparse "
                       "upcycling at T",
    "diff ± SE": "clipforge.stats.difference: the seeds' SE of the paired mean difference and the binomial SE of "
                 "both fractions on the test items; a claim holds only beyond two SEs (stats.decide)",
    "experts' embedding mean": "every expert's dense model (the base and the stage models) embeds every input; the "
                               "normalised embeddings are averaged: what the experts hold together, an upper "
                               "bound on what routing can recover, at E dense passes",
    "mean ± std": "over seeds (sample std); the base has one value",
}


def _pct(ms: dict[str, float] | None) -> str:
    if not ms:
        return "–"
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f}" if ms.get("n", 1) > 1 else f"{100 * ms['mean']:.1f}"


def _diff(p: dict[str, Any] | None) -> str:
    return p["text"] if p else "–"


def header(r: dict[str, Any]) -> list[str]:
    b, d, a = r["budget"], r["derived"], r.get("ancestry_check") or {}
    c, st = d["clusters"], a.get("stretch", {})
    lines = ["# CLIP-MoE benchmark v2 (issue 33): the paper's protocol in miniature, with SE-aware verdicts", "",
             f"Made by `{r['command']}` ({r['wall_time_s'] / 60:.1f} min in this process; every unit's own wall "
             f"time below). Ancestry: `{r['ancestry']}` (weights {str(a.get('weights_sha256'))[:16]}).", ""]
    if r.get("machine"):
        lines += [harness.machine_line(r["machine"]), ""]
    lines += ["Controls: the v1 protocol's results [v1/results.md](v1/results.md) (alt-only ancestry, 60-step "
              "stages, 1,000 test scenes) and the first wave's [same_distribution/results.md]"
              "(same_distribution/results.md).", "",
              f"Budget: pool N = {b['pool']:,} new scenes with {b['caption_style']} captions, global batch B = "
              f"{b['batch']}, {b['experts']} experts top-{b['top_k']}; MCL stages of one sampler epoch (lr "
              f"{b['stage_lr']}, {c['k_img']}x{c['k_txt']} = {c['clusters']} clusters per stage: "
              f"{c['accumulated']} last-stage clusters of {c['batches_per_cluster']:.1f} batches, {b['policy']}, "
              f"{b['cluster_order']} order), routers R = {d['R']} steps (lr {b['router_lr']}); S = {d['S']}, T = "
              f"{d['T']} steps (lr {b['ft_lr']}); seeds {list(b['seeds'])}; diagnostic {b['diag_steps']} steps, "
              f"seeds {list(b['diag_seeds'])}. Test items: {r['items']['retrieval']:,} held-out scenes, "
              f"{r['items']['mmvp']:,} MMVP pairs per attribute, {r['items']['fmnist']:,} Fashion-MNIST images.", ""]
    if st:
        lines += [f"Text context: the ancestry's {st['context']} positions hold {100 * st['covered_by_context']:.0f} "
                  f"% of the pool's captions (median {st['tokens_median']:.0f}, max {st['tokens_max']} tokens); "
                  + (f"every method starts from it Long-CLIP-stretched (keep {st['keep']}, factor {st['factor']}) to "
                     f"{st['stretched_context']} positions, which hold {100 * st['covered_after']:.0f} %."
                     if st["factor"] > 1 else "no stretch needed."), ""]
    return lines


def verdict_lines(r: dict[str, Any]) -> list[str]:
    lines = ["## What it shows", ""]
    seen = list(dict.fromkeys(v.get("group") for v in r["verdicts"]))
    for g in GROUPS + [g for g in seen if g not in GROUPS]:  # a group not listed is still shown, last
        vs = [v for v in r["verdicts"] if v.get("group") == g]
        if vs:
            lines += [f"**{g}**", ""] + [f"* {v['line']}" for v in vs] + [""]
    lines += ["## Parameter-matched and compute-matched, side by side", "",
              "CLIP-MoE minus each comparison, in points, ± SE (seeds, test items).", ""]
    rows = [[s["comparison"], s["matched"], _diff(s.get(DENSE)), _diff(s.get("dense_i2t_r1")), _diff(s.get(FMNIST))]
            for s in r["side_by_side"]]
    return lines + harness.table(["comparison", "matched on", "dense T→I R@1", "dense I→T R@1", "FMNIST top-1"], rows)


def diagnostic_lines(r: dict[str, Any]) -> list[str]:
    dg = r["diagnostic"]
    if not dg["rows"]:
        return []
    rows = []
    for p, row in dg["rows"].items():
        m = row["metrics"]
        rows.append([p, _pct(m.get(DENSE)), _pct(m.get("dense_i2t_r1")), _pct(m.get("full_t2i_r1")),
                     _pct(m.get(FMNIST)), _pct(m.get("mmvp_mean")), _diff(row["gain"]), _diff(row.get("vs_full")),
                     _diff(row["fmnist_change"])])
    b = r["budget"]
    return ["", f"## Diagnostic: which channel full fine-tuning's gain comes through ({b['diag_steps']} steps, "
                f"seeds {list(b['diag_seeds'])})", ""] + harness.table(
        ["trains", "dense T→I R@1", "dense I→T R@1", "full T→I R@1", "FMNIST", "MMVP mean", "dense T→I gain over base",
         "minus full FT", "FMNIST change"], rows) + [""] + [f"* {v['line']}" for v in dg["verdicts"]]


def main_lines(r: dict[str, Any]) -> list[str]:
    main = r["main"]
    names = [n for n in ORDER if n in main] + [n for n in main if n not in ORDER and not n.startswith("stage")]
    quality = [[n] + [_pct(main[n]["metrics"].get(k)) for k, _ in MAIN] for n in names]
    cost = []
    for n in names:
        c, t = main[n].get("cost") or {}, main[n].get("train_s")
        cost.append([n, f"{c.get('params_stored', 0):,}" if c else "–", f"{c.get('params_active_per_token', 0):,}"
                     if c else "–", f"{c.get('flops_per_image', 0) / 1e9:.3f}" if c else "–",
                     f"{t:.0f}" if t else "–"])
    lines = ["", "## Main table (%, mean ± std over seeds)", ""] + harness.table(["model"] + [h for _, h in MAIN],
                                                                                 quality)
    lines += ["", "## Cost", ""] + harness.table(["model", "params stored", "active / token", "GFLOPs / image",
                                                   "train wall s (mean)"], cost)
    stages = [(n, main[n]["stages"]) for n in names if main[n].get("stages")]
    if stages:
        rows = [[n, st, s.get("num", "–"), f"{s.get('size_min', '–')} / {s.get('size_median', '–')} / "
                 f"{s.get('size_max', '–')}", s.get("kept_batches", "–"), s.get("steps", "–"),
                 f"{100 * (s.get('dropped_share') or 0):.1f} %"] for n, rep in stages for st, s in rep.items()]
        lines += ["", "## MCL stages (first seed): clusters, batches and steps of one sampler epoch", ""] + \
            harness.table(["model", "stage", "clusters", "size min / median / max", "batches", "steps", "dropped"],
                          rows)
    return lines


def table1_lines(r: dict[str, Any]) -> list[str]:
    main = r["main"]
    names = ["base"] + sorted(n for n in main if n.startswith("stage")) + [n for n in ("CLIP-MoE",
                                                                                      "experts' embedding mean (bound)")
                                                                           if n in main]
    rows = [[n] + [_pct(main[n]["metrics"].get(f"mmvp_{a}")) for a in ATTRS + ["mean"]] for n in names if n in main]
    return ["", "## Table 1: MMVP-style pair accuracy of the base, every stage model and CLIP-MoE", ""] + \
        harness.table(["model"] + ATTRS + ["mean"], rows)


def unit_lines(r: dict[str, Any]) -> list[str]:
    rows = [[n, f"{u.get('wall_time_s') or 0:.0f}", f"{u.get('train_s') or 0:.0f}", f"{u.get('eval_s') or 0:.0f}",
             u.get("threads", "–")] for n, u in r["units"].items()]
    total = sum((u.get("wall_time_s") or 0) for u in r["units"].values())
    return ["", f"## Units (records in `units/`; {total / 60:.0f} min of unit wall time in all)", ""] + harness.table(
        ["unit", "wall s", "train s", "eval s", "threads"], rows)


def markdown(r: dict[str, Any]) -> str:
    """results.md: the command and budget, the verdicts, the side-by-side table, the diagnostic, every table."""
    lines = header(r) + verdict_lines(r) + diagnostic_lines(r) + main_lines(r) + table1_lines(r) + unit_lines(r)
    lines += ["", "## Definitions", ""] + [f"* **{k}**: {v}" for k, v in DEFINITIONS.items()]
    lines += ["", "Plots: `plots/main.png`, `plots/diagnostic.png`, `plots/table1_stages_mmvp.png`, "
              "`plots/fig3_routing.png`.", ""]
    return "\n".join(lines)


PANEL_TITLES = {"fmnist_acc1": "Fashion-MNIST zero-shot top-1", "dense_t2i_r1": "dense T→I R@1",
                "dense_i2t_r1": "dense I→T R@1", "full_t2i_r1": "full T→I R@1", "alt_t2i_r1": "alt T→I R@1",
                "mmvp_mean": "MMVP-style pairs (mean)"}


def metric_panels(rows: dict[str, Any], names: list[str], keys: list[str], path: Path, title: str) -> Path:
    """One panel per metric, each on its own scale (R@1 near 3 % beside zero-shot near 80 % would vanish on a
    shared axis), models as labelled horizontal bars: readable at laptop width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipforge.report.plots import _save

    cols = 3
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(12, 0.9 + 0.55 * len(names) * 2),
                             sharey=True, squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for ax, key in zip(axes.flat, keys):
        m = [100 * rows[n]["metrics"].get(key, {}).get("mean", 0) for n in names]
        e = [100 * rows[n]["metrics"].get(key, {}).get("std", 0) for n in names]
        ax.barh(range(len(names)), m, xerr=e, color=[colours[i % 20] for i in range(len(names))], capsize=2)
        ax.set_title(PANEL_TITLES.get(key, key), fontsize=9)
        ax.set_xlabel("%", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels(names, fontsize=8)
    axes[0][0].invert_yaxis()
    for row in axes:
        row[0].tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plots(r: dict[str, Any], out: Path) -> None:
    """The main table, the diagnostic, Table 1 and Fig. 3 as PNGs in `out/plots`."""
    from clipforge.report.moe_run import plot_routing
    from clipforge.report.plots import grouped_bars

    main = r["main"]
    names = [n for n in ORDER if n in main]
    keys = ["fmnist_acc1", "dense_t2i_r1", "dense_i2t_r1", "full_t2i_r1", "alt_t2i_r1", "mmvp_mean"]

    def series(rows: dict[str, Any], ns: list[str], ks: list[str], what: str) -> dict[str, list[float]]:
        return {n: [rows[n]["metrics"].get(k, {}).get(what, 0) for k in ks] for n in ns}

    metric_panels(main, names, keys, out / "plots" / "main.png", "CLIP-MoE v2 vs baselines (mean ± std over seeds)")
    dg = r["diagnostic"]["rows"]
    if dg:
        metric_panels(dg, list(dg), keys, out / "plots" / "diagnostic.png", "Diagnostic: what fine-tuning trains")
    t1 = ["base"] + sorted(n for n in main if n.startswith("stage")) + (["CLIP-MoE"] if "CLIP-MoE" in main else [])
    mk = [f"mmvp_{a}" for a in ATTRS]
    grouped_bars(ATTRS, series(main, t1, mk, "mean"), out / "plots" / "table1_stages_mmvp.png", percent=True,
                 chance=0.25, ylabel="pair accuracy (%)", title="MMVP-style pair accuracy per MCL stage model",
                 errors=series(main, t1, mk, "std"))
    if r.get("routing"):
        plot_routing(r["routing"], out / "plots" / "fig3_routing.png",
                     title="CLIP-MoE routing on held-out scenes (first seed; paper Fig. 3)")
