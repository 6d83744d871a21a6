"""Turn the benchmark's unit records into results.json, results.md and PNGs (each written atomically)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from clipforge.report.plots import grouped_bars

from .methods import DESCRIPTIONS, LABELS, METHODS

# (results key, task, metric, title) of the headline tables and bar charts.
HEADLINES = (("clip", "mean_r1", "(a) CLIP: held-out scenes retrieval, mean of I2T and T2I R@1", "retrieval"),
             ("fashion_mnist", "acc1", "(b) vision-only: Fashion-MNIST fine-tuned top-1", "fashion_mnist"),
             ("mnist", "acc1", "(b) vision-only: MNIST fine-tuned top-1", "mnist"),
             ("text", "acc1", "(c) text-only: object count from caption, linear-probe top-1", "text"))


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def aggregate(units: dict[tuple[str, int, int], dict[str, Any]], depths: list[int], seeds: list[int]) -> dict:
    """{method: {depth: {task: {metric: mean_std}}}} over seeds."""
    out: dict[str, Any] = {}
    for m in METHODS:
        out[m] = {}
        for d in depths:
            runs = [units[(m, d, s)] for s in seeds]
            out[m][str(d)] = {task: {k: mean_std([r[task][k] for r in runs]) for k in runs[0][task]
                                     if isinstance(runs[0][task][k], (int, float))}
                              for task in ("clip", "fashion_mnist", "mnist", "text")}
    return out


def _cell(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"


def _table(agg: dict, task: str, metric: str, depths: list[int]) -> list[str]:
    lines = ["| method | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for m in METHODS:
        cells = [_cell(agg[m][str(d)][task][metric]) for d in depths]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return lines


def _retrieval_table(agg: dict, depths: list[int]) -> list[str]:
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    lines = ["| method | depth | " + " | ".join(k.replace("_r", " R@") for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for m in METHODS:
        for d in depths:
            lines.append(f"| {LABELS[m]} | {d} | " + " | ".join(_cell(agg[m][str(d)]["clip"][k]) for k in keys) + " |")
    return lines


def _fmt_flops(x: float) -> str:
    return f"{x / 1e12:.2f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def _cost_table(costs: dict) -> list[str]:
    lines = ["| method | storage (params) | storage / PT-FT | blocks only / PT-FT | pre-training FLOPs | "
             "PT-FT ÷ method (FLOPs) | wall s | PT-FT ÷ method (wall) |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        c = costs[m]
        ratio = lambda x: "—" if x is None else f"{x:.2f}×"  # noqa: E731
        lines.append(f"| {LABELS[m]} | {c['storage_params']:,} | {c['storage_ratio_vs_ptft']:.1%} | "
                     f"{c['block_storage_ratio_vs_ptft']:.1%} | {_fmt_flops(c['pretrain_flops'])} | "
                     f"{ratio(c['cost_ratio_flops_ptft_over_method'])} | {c['pretrain_wall_time_s']:.0f} | "
                     f"{ratio(c['cost_ratio_wall_ptft_over_method'])} |")
    return lines


def _steps_table(stt: dict) -> list[str]:
    lines = ["| depth | target (PT-FT after P) | " + " | ".join(LABELS[m] for m in METHODS) + " |",
             "|---|---|" + "---|" * len(METHODS)]
    for d, row in stt.items():
        cells = []
        for m in METHODS:
            r = row[m]
            reach = "—" if r["steps_to_target"] is None else str(r["steps_to_target"])
            equiv = "> P" if r["ptft_equivalent_steps"] is None else str(r["ptft_equivalent_steps"])
            cells.append(f"{reach} / {equiv}")
        lines.append(f"| {d} | {row['target']:.3f} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """results.md: the command, the protocol, budgets, every table, the definitions, the plots."""
    depths, b = results["budget"]["depths"], results["budget"]
    agg, costs = results["downstream"], results["costs"]
    lines = [f"# MM-LG benchmark ({'quick' if results['quick'] else 'full'})", "",
             f"Made by `{results['command']}` on {results['date']} ({results['device']}); "
             f"total wall time {results['wall_time_s'] / 60:.1f} min.", "",
             "clipforge's MM-LG is a reconstruction from the paper's abstract (arXiv 2506.16673) and the "
             "TLEG/SWS lineage, not the authors' code.", "", "## Protocol", ""]
    lines += [f"- {p}" for p in results["protocol"]]
    lines += ["", "Methods:", ""] + [f"- **{LABELS[m]}**: {DESCRIPTIONS[m]}" for m in METHODS]
    lines += ["", "Budgets:", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in b.items()]
    lines += ["", f"Ancestry: `{results['ancestry']['path']}` ({results['ancestry']['params']:,} parameters, "
              f"{results['ancestry']['depth']} blocks per tower).", ""]
    for task, metric, title, png in HEADLINES:
        lines += [f"## {title}", "", f"Mean ± std over seeds {b['seeds']}.", ""]
        lines += _table(agg, task, metric, depths) + ["", f"![{png}]({png}.png)", ""]
    lines += ["## (a) CLIP retrieval, every recall", ""] + _retrieval_table(agg, depths) + [""]
    lines += ["## Storage and pre-training cost of the whole family", ""] + _cost_table(costs) + [""]
    lines += [f"- {d}" for d in results["definitions"]] + [""]
    lines += ["## Steps to target", "", "Cell: steps this method's pre-training took to reach PT-FT's final "
              "held-out retrieval (— = not within its budget) / PT-FT steps needed to match this method's final "
              "value. Both on the evaluated checkpoints.", ""] + _steps_table(results["steps_to_target"]) + [""]
    lines += ["## Pre-training curves", "", "![curves](curves.png)", "",
              "Held-out scenes mean R@1 and Fashion-MNIST zero-shot top-1 of the CLIP descendant, before any "
              "fine-tuning, against its own pre-training steps (extraction is not on this axis: its cost is in "
              "the table above).", ""]
    lines += ["## Phase wall times (s)", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["phase_wall_time_s"].items()]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bar_charts(results: dict[str, Any], out: Path) -> list[Path]:
    depths, agg = results["budget"]["depths"], results["downstream"]
    paths = []
    for task, metric, title, png in HEADLINES:
        series = {LABELS[m]: [agg[m][str(d)][task][metric]["mean"] for d in depths] for m in METHODS}
        errors = {LABELS[m]: [agg[m][str(d)][task][metric]["std"] for d in depths] for m in METHODS}
        paths.append(grouped_bars([f"depth {d}" for d in depths], series, out / f"{png}.png", title=title,
                                  ylabel=metric, errors=errors))
    return paths


def curve_plot(curves: dict[str, dict[int, list]], depths: list[int], path: Path) -> Path:
    """Rows: the two curve metrics; columns: depths; one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("scenes_mean_r1", "held-out scenes mean R@1"), ("fmnist_zeroshot_acc1", "Fashion-MNIST zero-shot"))
    fig, axes = plt.subplots(len(metrics), len(depths), figsize=(4 * len(depths), 6.5), squeeze=False)
    for col, d in enumerate(depths):
        for row, (key, name) in enumerate(metrics):
            ax = axes[row][col]
            for i, m in enumerate(METHODS):
                pts = curves[m][d]
                # MM-LG drawn heavier and PT-FT dashed, so the two the benchmark is about stand out.
                style = {"lw": 2.5} if m == "mmlg" else {"ls": "--"} if m == "ptft" else {"lw": 1.2}
                ax.plot([s for s, _ in pts], [v[key] for _, v in pts], marker="o", ms=3, color=f"C{i}",
                        label=LABELS[m], **style)
            ax.set_title(f"depth {d}: {name}", fontsize=9)
            ax.set_xlabel("descendant pre-training steps")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
