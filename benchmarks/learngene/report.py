"""Turn the width-gap protocol's unit records into the summary, results.md and PNGs (verdicts: verdicts.py).

    python -m benchmarks.learngene.report [--out DIR]   # results.md and PNGs again from DIR/results.json

The same-width protocol's results (the negative control) are rebuilt by `same_width_report.py`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from clipforge.report.plots import grouped_bars

from .. import harness
from .methods import DESCRIPTIONS, LABELS
from .tasks import SCORE
from .verdicts import POINT_LABEL, TASKS, rows, verdicts

__all__ = ["markdown", "render", "summarise", "verdicts"]
CONTROLS = ("- **Negative control, same widths**: [`same-width/results.md`](same-width/results.md) (descendants at "
            "the ancestry's own widths: copying its blocks is near-optimal by construction there, and MM-LG lost to "
            "every block-copying baseline).\n- **First protocol** (step-matched, random learngene init): "
            "[`first_protocol/results.md`](first_protocol/results.md).")


def mean_std(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarise(results: dict, seeds: list[int]) -> dict:
    """{point: {method: {task: {member | "mean": mean_std over seeds}}}}, each task over its kind's members."""
    out: dict[str, Any] = {}
    for p, methods in rows(results).items():
        for m, per_member in methods.items():
            for task, metric, kind, _, _ in TASKS:
                cell: dict[str, Any] = {}
                for name, unit in per_member.items():
                    if name.startswith(f"{kind}-"):
                        ds = unit["downstream"]
                        cell[name] = mean_std([r[task][metric] for s, r in ds.items() if int(s) in seeds])
                cell["mean"] = mean_std([c["mean"] for c in cell.values()])
                out.setdefault(p, {}).setdefault(m, {})[task] = cell
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cell(ms: dict[str, float]) -> str:
    return f"{_pct(ms['mean'])} ± {_pct(ms['std'])}"


def _tflops(x: float) -> str:
    return f"{x / 1e12:.2f}"


def _of(present: dict, names: list[str]) -> str:
    """" (2 of 3)" when a --partial report lacks some of `names`."""
    k = sum(n in present for n in names)
    return "" if k == len(names) else f" ({k} of {len(names)})"


def _task_table(results: dict, task: str, kind: str) -> list[str]:
    names = [n for n in results["members"] if n.startswith(f"{kind}-")]
    s = results["summary"]
    body = [[LABELS[m], POINT_LABEL[p]] + [_cell(cells[task][n]) if n in cells[task] else "—" for n in names]
            + [_cell(cells[task]["mean"]) + _of(cells[task], names) if cells[task]["mean"]["n"] else "—"]
            for p in ("C/ratio", "C") for m, cells in s.get(p, {}).items()]
    return harness.table(["method", "compute"] + names + ["mean"], body)


def _quality(q: dict) -> str:
    return f"{_pct(q['mean_retrieval_recall@1'])} / {_pct(q['zeroshot_acc1'])}"


def _ptft_table(results: dict) -> list[str]:
    cap = results["budget"]["ptft_max_steps"]
    body = [[name, str(u["steps"]), "fired" if u["stopped_early"] else f"**cap** ({cap})",
             _tflops(u["flops"]), f"{100 * results['member_shares'][name]:.1f} %", _quality(u["curve"][-1][1]),
             f"{u['wall_time_s']:.0f}"] for name, u in results["ptft"].items()]
    return harness.table(["member", "steps", "plateau rule", "TFLOP", "share of C", "final R@1 / zero-shot",
                          "train s"], body)


def _extraction_table(results: dict) -> list[str]:
    anc, b = results["ancestry"]["quality"], results["budget"]
    lines = [f"Cells: held-out mean retrieval R@1 / Fashion-MNIST zero-shot top-1, in % (one-tower members beside "
             f"the ancestry's other tower). Ancestry on the same data: {_quality(anc)}. Each extraction: "
             f"{results['extraction_steps']} steps of {b['batch_size']} = {b['extract_fraction']:.0%} of the "
             f"{b['ancestry_samples']:,} samples the ancestry trained on, {b['extract_stages']} stages, Aux-Net "
             f"depth {b['aux_depth']} trained at depths {b['depths']} (one drawn per step), KD + feature term.", ""]
    body = []
    for e in results["extractions"].values():
        fit = (e.get("init_fit") or {}).get("relative_residual") or {}
        share = e["flops"] / results["points"]["C/ratio"]
        body.append([LABELS[e["mode"]], " / ".join(f"{fit[t]:.3f}" for t in ("vision", "text")) if fit else "—",
                     _quality(e["auxnet_quality"]["step0"]), _quality(e["auxnet_quality"]["final"]),
                     f"{_tflops(e['flops'])} ({100 * share:.0f} % of C/2.8)"]
                    + [_quality(e["descendants_step0"][n]) for n in results["members"]])
    return lines + harness.table(["learngene", "fit residual (v / t)", "Aux-Net step 0", "Aux-Net final", "TFLOP"]
                                 + [f"{n} at step 0" for n in results["members"]], body)


def _cost_table(results: dict) -> list[str]:
    st, pt = results["storage"], results["storage"]["ptft"]
    body = []
    for p, per_method in ((p, rows(results).get(p, {})) for p in ("C/ratio", "C")):
        for m, per_member in per_method.items():
            c = results["costs"]["PT-FT" if m == "ptft" else p][m]
            body.append([LABELS[m], POINT_LABEL[p], _tflops(c["family_flops"]) + _of(per_member, results["members"]),
                         _tflops(c.get("extraction_flops", 0)),
                         " / ".join(str(per_member[n]["steps"]) if n in per_member else "—"
                                    for n in results["members"]),
                         f"{c['family_wall_time_s']:.0f}", f"{st[m]['blocks']:,}",
                         f"{st[m]['blocks'] / pt['blocks']:.1%}", f"{st[m]['token_table']:,}", f"{st[m]['total']:,}"])
    return harness.table(["method", "compute", "family TFLOP", "extraction TFLOP",
                          f"steps ({' / '.join(results['members'])})", "train s", "block params kept",
                          "blocks / PT-FT", "token tables", "all params"], body)


def _verdict_lines(results: dict) -> list[str]:
    lines = []
    for v in results["verdicts"]:
        lines.append(f"- {v['line']}")
        lines += [f"  - {t['line']}" for t in v.get("tasks", [])]
    return lines


def _protocol(results: dict) -> list[str]:
    b, fam, anc = results["budget"], results["family_shape"], results["ancestry"]["shape"]
    tt = results["text_task"]
    return [
        f"- **Family**: {', '.join(results['members'])}: every kind at depths {b['depths']} of the ancestry's "
        f"{anc['vision'][0]}; blocks at {b['width_fraction']:.2f} of the ancestry's widths in whole heads: vision "
        f"{anc['vision'][1]} → {fam['vision']['width']} ({fam['vision']['heads']} heads, MLP {fam['vision']['mlp']}), "
        f"text {anc['text'][1]} → {fam['text']['width']} ({fam['text']['heads']} heads, MLP {fam['text']['mlp']}). "
        "One-tower members train and are measured beside the frozen ancestry's other tower (LiT-style).",
        f"- **C = {_tflops(results['C_flops'])} TFLOP**: PT-FT pre-trains every member from random init until its "
        f"curve score (mean of held-out retrieval R@1 and Fashion-MNIST zero-shot) gains less than "
        f"{b['plateau_delta']} over {b['plateau_patience']} evaluations (every {b['eval_every']} steps; safety cap "
        f"{b['ptft_max_steps']}, warm-up {b['ptft_warmup']}). Every method gets F = C / {b['ratio']} "
        f"({_tflops(results['points']['C/ratio'])} TFLOP); {', '.join(LABELS[m] for m in b['methods_at_c'])} also "
        "F = C, split over the members in PT-FT's proportions after a learngene method's extraction (once per "
        "family and point). FLOPs: 3 × the student's forward plus every ancestry forward a step reads (costs.py).",
        "- **Data**: the pre-training pool is the start of the ancestry's own training set "
        f"({results['pool']['name']}, "
        f"{results['pool']['samples']:,} samples), batch {b['batch_size']}; the ancestry's embeddings of it are "
        f"computed once (teacher cache: {results['teacher_cache']['rows']:,} rows) and read by every run that "
        f"distils. Ancestry-initialised methods: KD (half KD, half InfoNCE; TinyCLIP pure affinity KD), lr "
        f"{b['kd_lr']}, no warm-up (SWS). Random-init ones: InfoNCE (feature KD adds β = {b['fd_beta']} × MSE), lr "
        f"{b['lr']}, 10 % warm-up.",
        f"- **Downstream**, per seed {b['seeds']}: CLIP members {b['ft_clip_steps']} contrastive fine-tuning steps on "
        f"{b['ft_scenes']} scenes, retrieval on {b['eval_scenes']} held-out scenes; vision members tower + linear "
        f"head, {b['ft_vision_steps']} steps on {b['ft_vision_train']} Fashion-MNIST / MNIST images, top-1 on "
        f"{b['eval_classify']}; text members a linear probe for the object count of {b['text_test']} test captions "
        f"whose every token the ancestry trained ({tt['untrained']} of {tt['drawn']} drawn test captions "
        f"({100 * tt['untrained'] / tt['drawn']:.1f} %) held an untrained token"
        f"{' and were left out' if tt.get('filtered', True) else ', kept in this smoke test'}"
        f"{'' if tt['checked'] else '; not checked: the ancestry records no initialisation'}). Mean ± std over "
        "seeds, in %."]


def _partial(results: dict) -> list[str]:
    """What a --partial report lacks, said before anything else."""
    part = results.get("partial")
    if not part:
        return []
    missing, total = part["missing"], part["units"]
    return [f"**Partial: {total - len(missing)} of {total} units.** This report was written from the unit records "
            f"present, before the run finished (`--partial`); each claim is computed over the members both of its "
            f"methods have, and a table's — marks a missing unit. Missing ({len(missing)}): "
            f"{', '.join(missing)}. They need the ancestry the run started with (weights "
            f"{results['ancestry']['weights_sha256']}); the one this machine trained is {part['ancestry_here']}.", ""]


def markdown(results: dict) -> str:
    """results.md: the verdicts first, then the protocol, the tables and the plots."""
    kind = ('quick' if results['quick'] else 'full') + (', partial' if results.get('partial') else '')
    lines = [f"# MM-LG benchmark, width-gap protocol ({kind})", "",
             f"Made by `{results['command']}` on {results['date']} ({results['device']}); wall time of this "
             f"invocation {results['wall_time_s'] / 60:.1f} min ({len(results['units_reused'])} units reused from "
             "their records).", "", harness.machine_line(results["machine"]), "",
             "clipforge's MM-LG is a reconstruction from the paper's abstract (arXiv 2506.16673) and the TLEG/SWS "
             "lineage, not the authors' code.", "", *_partial(results), "Controls:", "", CONTROLS, "", "## Verdicts",
             "",
             "Rule: `clipforge.stats` (docs/design.md 5d): a difference holds only beyond two standard errors, the "
             "SE combining the spread of the paired (depth, seed) differences and the binomial SE of the test items.",
             ""]
    lines += _verdict_lines(results)
    lines += ["", "## Protocol", ""] + _protocol(results) + ["", "Methods:", ""]
    lines += [f"- **{LABELS[m]}**: {DESCRIPTIONS[m]}" for m in ("ptft",) + tuple(results["runs"]["C/ratio"])]
    for task, _, kind, title, _ in TASKS:
        lines += ["", f"## {title}", ""] + _task_table(results, task, kind)
    lines += ["", "![retrieval](retrieval.png)", "", "## PT-FT to its plateau (defines C)", ""] + _ptft_table(results)
    lines += ["", "## Extraction: the Aux-Net and the family before pre-training", ""] + _extraction_table(results)
    lines += ["", "## Compute and storage of the whole family", "",
              "Storage headline: transformer-block parameters kept to make the family; the 49,408-row token tables "
              "(one per text tower kept) apart.", ""] + _cost_table(results)
    lines += ["", "## Quality against compute", "", "![curves](curves.png)", "", "## Phase wall times (s)", ""]
    lines += harness.table(["phase", "seconds"], [[k, f"{v:.0f}"] for k, v in results["phase_wall_time_s"].items()])
    return "\n".join(lines) + "\n"


def _first(seen: set[str], label: str) -> str | None:
    """`label` the first time it is asked for, then None: one legend entry per line style."""
    if label in seen:
        return None
    seen.add(label)
    return label


def curve_plot(results: dict, path: Path) -> Path:
    """One panel per member: curve score against the FLOPs spent on it, one line per method and point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipforge.files import atomic_path

    names, r = results["members"], rows(results)
    cols = len(results["budget"]["depths"])
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(4 * cols, 3.2 * len(names) / cols),
                             squeeze=False)
    methods = list(dict.fromkeys(m for p in r.values() for m in p))
    labelled: set[str] = set()
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        for p, per_method in r.items():
            for m, per_member in per_method.items():
                u = per_member.get(name)
                if u is None:  # a unit a --partial report has no record of
                    continue
                ext = results["costs"].get(p, {}).get(m, {}).get("extraction_flops", 0) / len(names)
                per_step = u["flops"] / max(1, u["steps"])
                ax.plot([(ext + s * per_step) / 1e12 for s, _ in u["curve"]], [100 * v[SCORE] for _, v in u["curve"]],
                        marker="o" if p == "C/ratio" else "s", ms=3, color=f"C{methods.index(m) % 10}",
                        lw=2.2 if m == "mmlg" else 1.0, ls="--" if m == "ptft" else "-",
                        label=_first(labelled, f"{LABELS[m]} ({POINT_LABEL[p]})"))
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.supylabel("curve score (%)")
    fig.legend(loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.text(0.5, 0.1, "TFLOP spent on this member (extraction shared equally)", ha="center", va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def render(results: dict, out: Path) -> None:
    """results.md, retrieval.png and curves.png in `out`, from the result record."""
    s, names = results["summary"], [n for n in results["members"] if n.startswith("clip-")]
    nan = {"mean": float("nan"), "std": 0.0}  # a member a --partial report has no record of
    series = {f"{LABELS[m]} ({POINT_LABEL[p]})": [s[p][m]["clip"].get(n, nan)["mean"] for n in names]
              for p in ("C/ratio", "C") for m in s.get(p, {})}
    errors = {f"{LABELS[m]} ({POINT_LABEL[p]})": [s[p][m]["clip"].get(n, nan)["std"] for n in names]
              for p in ("C/ratio", "C") for m in s.get(p, {})}
    methods = list(dict.fromkeys(m for p in ("C/ratio", "C") for m in s.get(p, {})))
    styles = {f"{LABELS[m]} ({POINT_LABEL[p]})": {"color": f"C{methods.index(m) % 10}", "edgecolor": "white",
                                                 "hatch": "//" if p == "C/ratio" else None}
              for p in ("C/ratio", "C") for m in s.get(p, {})}  # a colour per method, hatched at C/2.8
    grouped_bars(names, series, out / "retrieval.png", title="CLIP members: held-out retrieval, mean R@1 after "
                 "fine-tuning (hatched: C/2.8)", ylabel="R@1", errors=errors, percent=True, styles=styles)
    curve_plot(results, out / "curves.png")
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md and the PNGs from a results directory's results.json."""
    return harness.report_main("learngene", render, argv)


if __name__ == "__main__":
    sys.exit(main())
