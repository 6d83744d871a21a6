"""The same-width protocol's report (the negative control), frozen: results/same-width/results.md from its
results.json, exactly as it was committed.

The first cost-matched protocol (descendants at the ancestry's own widths, depths 2 / 4 / 6, CLIPs only)
found copying the ancestry's blocks near-optimal by construction; its records stay in
`results/same-width/` as the control the width-gap protocol (report.py) is read against. Verdicts there
used paired differences over (depth, seed) with the seeds' SE only: "beats" when mean − 2·SE > 0,
"matches or beats" when mean + 2·SE ≥ 0.

    python -m benchmarks.learngene.same_width_report [--out DIR]   # default results/same-width
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from clipforge.report.plots import grouped_bars

from .. import harness

SCORE = "score"
LABELS = {"mmlg": "MM-LG", "scratch": "Scratch", "ptft": "PT-FT", "heur_lg": "Heur-LG", "auto_lg": "Auto-LG",
          "tleg_per_tower": "TLEG-per-tower", "shared_only": "Shared-only", "tinyclip": "TinyCLIP-style",
          "weight_selection": "Weight selection", "feature_kd": "Feature KD"}
DESCRIPTIONS = {
    "ptft": "random init, contrastive pre-training of each depth until its plateau rule fires: defines C",
    "mmlg": "descended from the MM-LG learngene (shared multimodal + per-tower unimodal blocks, least-squares "
            "init from the ancestry, the chosen extraction recipe), then the KD recipe",
    "tleg_per_tower": "descended from a TLEG learngene per tower (no shared block), same init and recipes",
    "shared_only": "descended from a learngene with one shared block pair (no unimodal block), same init and recipes",
    "scratch": "random init, contrastive pre-training with the same family compute",
    "feature_kd": "random init, InfoNCE + β·MSE to the ancestry's embeddings (CLIP-KD's feature distillation)",
    "tinyclip": "TinyCLIP-style weight inheritance (ancestry blocks floor(i·L/d)) + affinity-mimicking KD",
    "weight_selection": "weight selection (the first d ancestry blocks; elements selected uniformly if narrower) + KD",
    "heur_lg": "the ancestry's last k blocks per tower on random lower blocks, then KD",
    "auto_lg": "the k ancestry blocks with the highest Block Influence on one batch, then KD",
}

TASKS = (("clip", "mean_r1", "(a) CLIP: held-out scenes retrieval, mean of I→T and T→I R@1"),
         ("fashion_mnist", "acc1", "(b) vision-only: Fashion-MNIST fine-tuned top-1"),
         ("mnist", "acc1", "(b) vision-only: MNIST fine-tuned top-1"),
         ("text", "acc1", "(c) text-only: object count from the caption, linear-probe top-1"))
POINTS = {"C/ratio": "F = C / ratio", "C": "F = C"}


def mean_std(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def _rows(results: dict) -> dict[str, dict[str, dict[str, dict]]]:
    """{point: {method: {depth: unit}}}, PT-FT under the point "C" (it defines C)."""
    rows = {p: dict(v) for p, v in results["runs"].items()}
    rows.setdefault("C", {})["ptft"] = results["ptft"]
    return rows


def _values(unit: dict, task: str, metric: str) -> dict[str, float]:
    return {s: r[task][metric] for s, r in unit["downstream"].items()}


def summarise(results: dict, depths: list[int], seeds: list[int]) -> dict:
    """{point: {method: {task: {depth | "mean": mean_std over seeds}}}}."""
    out: dict[str, Any] = {}
    for p, methods in _rows(results).items():
        for m, per_depth in methods.items():
            for task, metric, _ in TASKS:
                cell: dict[str, Any] = {}
                for d in depths:
                    vals = [v for s, v in _values(per_depth[str(d)], task, metric).items() if int(s) in seeds]
                    cell[str(d)] = mean_std(vals)
                cell["mean"] = mean_std([cell[str(d)]["mean"] for d in depths])
                out.setdefault(p, {}).setdefault(m, {})[task] = cell
    return out


def paired(results: dict, a: tuple[str, str], b: tuple[str, str], task: str, metric: str) -> list[float]:
    """a − b per (depth, seed) for (method, point) pairs a and b."""
    rows = _rows(results)
    if a[0] not in rows.get(a[1], {}) or b[0] not in rows.get(b[1], {}):
        return []
    diffs = []
    for d in results["budget"]["depths"]:
        va, vb = _values(rows[a[1]][a[0]][str(d)], task, metric), _values(rows[b[1]][b[0]][str(d)], task, metric)
        diffs += [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
    return diffs


def _verdict(claim: str, diffs: list[float], kind: str, what: str) -> dict[str, Any]:
    ms = mean_std(diffs)
    se = ms["std"] / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    holds = ms["mean"] - 2 * se > 0 if kind == "beats" else ms["mean"] + 2 * se >= 0
    return {"claim": claim, "holds": bool(holds), "diff": ms["mean"], "se": se, "n": len(diffs),
            "line": f"{claim}: {'holds' if holds else 'does not hold'} ({what}: {100 * ms['mean']:+.1f} ± "
                    f"{100 * se:.1f} points, paired over {len(diffs)} (depth, seed) pairs)"}


def verdicts(results: dict) -> list[dict[str, Any]]:
    """One verdict per claim, computed from the records."""
    L = LABELS
    out = []
    tasks = (("clip", "mean_r1", "retrieval R@1"), ("fashion_mnist", "acc1", "Fashion-MNIST top-1"))

    def add(claim, a, b, kind, task, metric, tname):
        d = paired(results, a, b, task, metric)
        if d:
            what = f"{L[a[0]]} at {a[1]} − {L[b[0]]} at {b[1]}, {tname}"
            out.append(_verdict(f"{claim} [{tname}]", d, kind, what))

    for task, metric, tname in tasks:
        add("MM-LG beats Scratch at equal compute", ("mmlg", "C/ratio"), ("scratch", "C/ratio"), "beats", task, metric,
            tname)
    for task, metric, tname in tasks:  # paper: +3.65 Flickr30k R@1, +1.9 Pet top-1
        add("MM-LG at C/ratio matches or beats PT-FT at C", ("mmlg", "C/ratio"), ("ptft", "C"), "matches", task,
            metric, tname)
    for other in ("heur_lg", "auto_lg", "tleg_per_tower"):  # paper: +4.13, +3.1 over the other learngene methods
        for task, metric, tname in tasks:
            add(f"MM-LG beats {L[other]} at equal compute", ("mmlg", "C/ratio"), (other, "C/ratio"), "beats",
                task, metric, tname)
    for other in ("tinyclip", "weight_selection", "feature_kd"):
        for p in ("C/ratio", "C"):
            add(f"MM-LG beats {L[other]} at {p}", ("mmlg", p), (other, p), "beats", "clip", "mean_r1", "retrieval R@1")
    add("the multimodal block helps (MM-LG beats TLEG-per-tower)", ("mmlg", "C/ratio"), ("tleg_per_tower", "C/ratio"),
        "beats", "text", "acc1", "text count top-1")
    st = results["storage"]
    for key, label in (("total", "all parameters"), ("blocks", "block parameters")):
        ratio = st["mmlg"][key] / st["ptft"][key]
        holds = ratio <= 0.30
        out.append({"claim": f"storage: the learngene is about a quarter of PT-FT's family ({label})",
                    "holds": holds, "ratio": ratio,
                    "line": f"storage: the learngene is about a quarter (≤ 30 %) of PT-FT's family, {label}: "
                            f"{'holds' if holds else 'does not hold'} ({st['mmlg'][key]:,} vs {st['ptft'][key]:,}: "
                            f"{100 * ratio:.1f} %; paper ~25 %)"})
    return out


def _cell(ms: dict[str, float]) -> str:
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f}"


def _task_table(summary: dict, task: str, depths: list[int]) -> list[str]:
    rows = [[LABELS[m], POINTS[p]] + [_cell(cells[task][str(d)]) for d in depths] + [_cell(cells[task]["mean"])]
            for p in ("C/ratio", "C") for m, cells in summary.get(p, {}).items()]
    return harness.table(["method", "compute"] + [f"depth {d}" for d in depths] + ["mean"], rows)


def _tflops(x: float) -> str:
    return f"{x / 1e12:.2f}"


def _cost_table(results: dict) -> list[str]:
    depths = results["budget"]["depths"]
    st = results["storage"]
    rows = []
    for p, per_method in ((p, _rows(results).get(p, {})) for p in ("C/ratio", "C")):
        for m, per_depth in per_method.items():
            c = results["costs"]["PT-FT" if m == "ptft" else p][m]
            rows.append([LABELS[m], POINTS[p], _tflops(c["family_flops"]), _tflops(c.get("extraction_flops", 0)),
                         " / ".join(str(per_depth[str(d)]["steps"]) for d in depths), f"{c['family_wall_time_s']:.0f}",
                         f"{st[m]['total']:,}", f"{st[m]['total'] / st['ptft']['total']:.1%}",
                         f"{st[m]['blocks'] / st['ptft']['blocks']:.1%}"])
    return harness.table(["method", "compute", "family TFLOP", "extraction TFLOP", "steps per depth", "train wall s",
                          "storage (params)", "storage / PT-FT", "blocks / PT-FT"], rows)


def _quality(q: dict) -> str:
    return f"{100 * q['mean_retrieval_recall@1']:.1f} / {100 * q['zeroshot_acc1']:.1f}"


def _extraction_table(results: dict) -> list[str]:
    depths = results["budget"]["depths"]
    anc = results["ancestry"]["quality"]
    lines = ["Cells: held-out mean retrieval R@1 / Fashion-MNIST zero-shot top-1, in %. Ancestry on the same data: "
             f"{_quality(anc)}.", ""]
    rows = [[LABELS[e["mode"]], f"{e['recipe']}{' (chosen)' if e['recipe'] == results['recipe'] else ''}",
             f"{e['steps']} ({e['step_budget']})", _quality(e["auxnet_quality"]["step0"]),
             _quality(e["auxnet_quality"]["final"])] + [_quality(e["descendants_step0"][str(d)]) for d in depths]
            + [f"{100 * e['selection_score']:.1f}"] for e in results["extractions"].values()]
    return lines + harness.table(["learngene", "recipe", "steps (budget)", "Aux-Net step 0", "Aux-Net final"]
                                 + [f"descendant d{d} at step 0" for d in depths] + ["selection score"], rows)


def markdown(results: dict) -> str:
    """results.md: the verdicts first, then the protocol, the tables and the plots."""
    b, depths = results["budget"], results["budget"]["depths"]
    lines = [f"# MM-LG benchmark, cost-matched ({'quick' if results['quick'] else 'full'})", "",
             f"Made by `{results['command']}` on {results['date']} ({results['device']}); wall time of this "
             f"invocation {results['wall_time_s'] / 60:.1f} min ({len(results['units_reused'])} units reused from "
             "their records).", ""] + ([harness.machine_line(results["machine"]), ""] if results.get("machine") else [])
    lines += ["clipforge's MM-LG is a reconstruction from the paper's abstract (arXiv 2506.16673) and the TLEG/SWS "
              "lineage, not the authors' code.", "", "## Verdicts", ""]
    lines += [f"- {v['line']}" for v in results["verdicts"]]
    lines += ["", "## Protocol", "",
              f"- C = {_tflops(results['C_flops'])} TFLOP: PT-FT pre-trains each depth from random init until its "
              f"curve score (mean of held-out retrieval R@1 and Fashion-MNIST zero-shot) gains less than "
              f"{b['plateau_delta']} over {b['plateau_patience']} evaluations (every {b['eval_every']} steps; at most "
              f"{b['ptft_max_steps']} steps). Every method's family gets F = C / {b['ratio']} "
              f"({_tflops(results['points']['C/ratio'])} TFLOP); {', '.join(LABELS[m] for m in b['methods_at_c'])} "
              "also F = C. Depths share F in PT-FT's proportions "
              f"({', '.join(f'{d}: {100 * v:.0f} %' for d, v in results['depth_shares'].items())}).",
              f"- Learngene methods spend at most {b['extract_share']:.0%} of C / {b['ratio']} on one extraction "
              f"(Aux-Net depth {b['aux_depth']}, least-squares init from the ancestry, ended by the same plateau "
              f"rule); the recipe is chosen among {', '.join(b['recipes'])} by the mean step-0 score of the "
              f"descendants of depths {depths}: **{results['recipe']}**.",
              "- Pre-training data for every method: the ancestry's own (its scenes stream in its caption style "
              f"plus Fashion-MNIST prompts), batch {b['batch_size']}. Ancestry-initialised methods: KD from the "
              f"ancestry (half KD, half InfoNCE; TinyCLIP pure affinity KD), lr {b['kd_lr']}, no warm-up (SWS). "
              f"Random-init methods: InfoNCE (FD adds β = {b['fd_beta']} × feature MSE), lr {b['lr']}, 10 % warm-up.",
              f"- Downstream, per seed {b['seeds']}: (a) {b['ft_clip_steps']} contrastive fine-tuning steps on "
              f"{b['ft_scenes']} scenes, then retrieval on {b['eval_scenes']} held-out scenes; (b) vision tower + "
              f"linear head, {b['ft_vision_steps']} steps on {b['ft_vision_train']} Fashion-MNIST / MNIST images, "
              f"top-1 on {b['eval_classify']}; (c) text tower, linear probe for the object count of "
              f"{b['text_test']} test captions. Mean ± sample std over seeds, in %.", "",
              "Methods:", ""]
    lines += [f"- **{LABELS[m]}**: {DESCRIPTIONS[m]}" for m in ("ptft",) + tuple(results["runs"]["C/ratio"])]
    for task, _, title in TASKS:
        lines += ["", f"## {title}", ""] + _task_table(results["summary"], task, depths)
    lines += ["", "![retrieval](retrieval.png)", "", "## Extraction: the Aux-Net and its descendants before "
              "pre-training", ""] + _extraction_table(results)
    lines += ["", "## Compute and storage of the whole family", ""] + _cost_table(results)
    lines += ["", "## Quality against family compute", "", "![curves](curves.png)", "",
              "Curve score of each depth's CLIP before fine-tuning, against the FLOPs spent on that depth (a learngene "
              "method's extraction shared equally by the depths).", "", "## Phase wall times (s)", ""]
    lines += harness.table(["phase", "seconds"], [[k, f"{v:.0f}"] for k, v in results["phase_wall_time_s"].items()])
    return "\n".join(lines) + "\n"


def curve_plot(results: dict, path: Path) -> Path:
    """One panel per depth: curve score against the FLOPs spent on that depth, one line per method and point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = results["budget"]["depths"]
    rows = _rows(results)
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.8), squeeze=False)
    methods = list(dict.fromkeys(m for p in rows.values() for m in p))
    for col, d in enumerate(depths):
        ax = axes[0][col]
        for p, per_method in rows.items():
            for m, per_depth in per_method.items():
                u = per_depth[str(d)]
                shared = results["costs"].get(p, {}).get(m, {}).get("extraction_flops", 0) / len(depths)
                per_step = u["flops"] / max(1, u["steps"])
                xs = [(shared + s * per_step) / 1e12 for s, _ in u["curve"]]
                ys = [100 * v[SCORE] for _, v in u["curve"]]
                style = {"lw": 2.4} if m == "mmlg" else {"ls": "--", "lw": 1.6} if m == "ptft" else {"lw": 1.0}
                ax.plot(xs, ys, marker="o" if p == "C/ratio" else "s", ms=3, color=f"C{methods.index(m) % 10}",
                        label=f"{LABELS[m]} ({POINTS[p]})" if col == 0 else None, alpha=1.0 if p == "C/ratio" else 0.6,
                        **style)
        ax.set_title(f"depth {d}", fontsize=10)
        ax.set_xlabel("TFLOP spent on this depth")
        ax.set_ylabel("curve score (%)")
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    from clipforge.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def render(results: dict, out: Path) -> None:
    """results.md, retrieval.png and curves.png in `out`, from the result record."""
    depths = results["budget"]["depths"]
    s = results["summary"]
    series = {f"{LABELS[m]} ({POINTS[p]})": [s[p][m]["clip"][str(d)]["mean"] for d in depths]
              for p in ("C/ratio", "C") for m in s.get(p, {})}
    errors = {f"{LABELS[m]} ({POINTS[p]})": [s[p][m]["clip"][str(d)]["std"] for d in depths]
              for p in ("C/ratio", "C") for m in s.get(p, {})}
    grouped_bars([f"depth {d}" for d in depths], series, out / "retrieval.png",
                 title="(a) held-out retrieval, mean R@1 after fine-tuning", ylabel="R@1 (%)", errors=errors,
                 percent=True)
    curve_plot(results, out / "curves.png")
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild the control's results.md and PNGs from its results.json (default results/same-width)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", str(harness.results_dir("learngene") / "same-width")]
    return harness.report_main("learngene", render, argv)


if __name__ == "__main__":
    sys.exit(main())
