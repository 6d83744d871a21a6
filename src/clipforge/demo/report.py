"""The demo's report: one table of the whole family, the plots, sample retrievals, wall time per phase.

Every number is read from the files the demo's phases wrote (eval/*.json, the runs' log.jsonl,
routing statistics), and `report.md` / `report.html` say which command made them.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..report.document import Report
from ..report.plots import _save, read_log

ATTRS = ["colour", "shape", "size", "fill", "position", "orientation", "count", "binding", "relation"]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.1f}"


def _quality(rec: dict[str, Any]) -> tuple[str, float | None]:
    h = rec["headline"]
    if "fmnist_acc1" in h:
        return "FMNIST zero-shot", h["fmnist_acc1"]
    if "fmnist_probe_acc1" in h:
        return "FMNIST linear probe", h["fmnist_probe_acc1"]
    return "count probe (text)", h.get("count_probe_acc1")


def family_table(records: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    cols = ["model", "kind", "params stored", "active / token", "MFLOPs / image", "MFLOPs / caption",
            "ms / image", "ms / caption", "T→I R@1", "T→I R@5", "T→I R@10", "I→T R@1", "I→T R@5", "I→T R@10",
            "accuracy (task)", "MMVP mean"]
    rows = []
    for name, r in records.items():
        h, c = r["headline"], r["cost"]
        task, acc = _quality(r)
        rows.append([name, r["kind"], f"{c['params_stored']:,}", f"{c['params_active_per_token']:,}",
                     _g(c.get("flops_per_image")), _g(c.get("flops_per_caption")),
                     f"{c['latency_image_ms']:.3f}" if "latency_image_ms" in c else "–",
                     f"{c['latency_caption_ms']:.3f}" if "latency_caption_ms" in c else "–",
                     *[_pct(h.get(f"t2i_r{k}")) for k in (1, 5, 10)], *[_pct(h.get(f"i2t_r{k}")) for k in (1, 5, 10)],
                     f"{_pct(acc)} ({task})", _pct(h.get("mmvp_mean"))])
    return cols, rows


def plot_tradeoff(records: dict[str, dict[str, Any]], path: Path) -> Path:
    """Quality against active parameters per token, for every model of the family."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in records.items():
        h, active = r["headline"], r["cost"]["params_active_per_token"]
        marker = "s" if "MoE" in name else "o" if r["kind"] == "clip" else "^"
        if "t2i_r1" in h:
            axes[0].scatter(active, (h["t2i_r1"] + h["i2t_r1"]) / 2, marker=marker, s=60)
            axes[0].annotate(name, (active, (h["t2i_r1"] + h["i2t_r1"]) / 2), fontsize=7, xytext=(4, 3),
                             textcoords="offset points")
        task, acc = _quality(r)
        if acc is not None:
            axes[1].scatter(active, acc, marker=marker, s=60)
            axes[1].annotate(f"{name} [{task}]", (active, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes[0].set_title("held-out scenes retrieval (mean of T→I and I→T R@1)")
    axes[1].set_title("classification / text task accuracy")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in axes:
        ax.set_xscale("log")
        # Family members can lie within a few percent of each other: plain "9.6M" labels, no minor clutter.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:.2g}M"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters active per token")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("R@1")
    axes[1].set_ylabel("top-1")
    fig.suptitle("size / quality trade-off across the family (■ MoE, ● CLIP, ▲ one tower)", fontsize=10)
    return _save(fig, path)


def plot_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """Training loss of every run that logged one, one panel each."""
    import matplotlib.pyplot as plt

    from ..report.plots import smooth

    logs = {k: [r for r in read_log(p) if "loss" in r] for k, p in runs.items() if p.is_file()}
    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        return None
    n = len(logs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, recs) in zip([a for row in axes for a in row], logs.items()):
        steps, vals = [r["step"] for r in recs], [float(r["loss"]) for r in recs]
        ax.plot(steps, vals, color="0.75", lw=0.8)
        ax.plot(steps, smooth(vals, max(1, len(vals) // 20)), color="C0", lw=1.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in [a for row in axes for a in row][n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def write_report(out: Path, records: dict[str, dict[str, Any]], phases: dict[str, float], cfg: Any,
                 anc_run: Path, cached: bool, ancestry_dir: Path, moe_dir: Path) -> tuple[Path, Path]:
    """Assemble plots and tables into `out/report.md` and `out/report.html`."""
    from ..data.scenes import ScenesDataset
    from ..models import io
    from ..moe.routing import plot_routing, routing_stats
    from ..report.plots import grouped_bars
    from ..report.samples import plot_retrieval_examples, retrieval_examples

    plots = out / "plots"
    command = "clipforge demo" + (" --quick" if cfg.quick else "") + f" --out {out}"
    r = Report("clipforge demo: one CLIP becomes a family")
    r.paragraph(f"Made by `{command}` (ancestry from `{anc_run}`, "
                f"{'cached from an earlier run' if cached else 'trained by this run'}) with torch {torch.__version__} "
                f"on {platform.machine()} ({torch.get_num_threads()} threads, Python {sys.version.split()[0]}). "
                "Every number below is read from the files this command wrote under "
                f"`{out}` (eval/*.json, the runs' log.jsonl, routing.json).")
    r.heading("What was made")
    r.bullets([
        f"**ancestry**: the demo CLIP trained on scenes + Fashion-MNIST (`{ancestry_dir}`"
        + ("; a toy budget: `--quick` checks the pipeline, not the methods)." if cfg.quick else
           ", to convergence)."),
        f"**CLIP-MoE** (grow): Diversified Multiplet Upcycling of the ancestry on {cfg.train_scenes:,} new scenes: "
        "MCL stages fine-tune the FFNs on cluster-pure batches, the stage FFNs become experts, only routers train "
        f"(`{moe_dir}`).",
        "**MM-LG** (shrink / reshape): a learngene extracted from the ancestry by distillation, then descendants "
        "initialised from it at several depths and modalities, each briefly pre-trained "
        f"({cfg.pretrain_steps} steps).",
        "**CLIP-MoE of an MM-LG descendant**: the two methods composed, DMU applied to the middle descendant."])

    r.heading("The family")
    cols, rows = family_table(records)
    r.table(cols, rows, caption=f"Retrieval: {cfg.suite.scenes:,} held-out test scenes (unseen shape-colour "
            "combinations), recall in %. Accuracy: Fashion-MNIST zero-shot for CLIPs, Fashion-MNIST linear probe for vision-only, "
            "object counting from captions (linear probe) for text-only. FLOPs: analytic forward FLOPs (cost.py), "
            f"captions at {records[next(iter(records))]['cost']['caption_tokens']} tokens. Latency: measured forward "
            "time per sample at batch 64 on this machine.")
    mm_rows = [[name] + [_pct(rec["headline"].get(f"mmvp_{a}")) for a in ATTRS] + [_pct(rec["headline"].get("mmvp_mean"))]
               for name, rec in records.items() if "mmvp_mean" in rec["headline"]]
    r.heading("What each model sees: MMVP-style pairs per attribute")
    r.table(["model"] + ATTRS + ["mean"], mm_rows,
            caption="Pair accuracy in % (two images differing in one attribute; both must pick their own caption; "
                    "chance 25 %). Binding, relation and count are what converged contrastive models miss.")

    r.heading("Size against quality")
    r.image(plot_tradeoff(records, plots / "tradeoff.png"), "Quality against parameters active per token.")

    r.heading("Inside the CLIP-MoE")
    moe = io.load(moe_dir).eval()
    size = int(moe.config.vision_config.image_size)
    test = ScenesDataset(split="test", size=min(500, cfg.suite.scenes), seed=1, image_size=size)
    stats = routing_stats(moe, test)
    from ..files import write_json

    write_json(out / "clip_moe" / "routing.json", stats)
    r.image(plot_routing(stats, plots / "routing.png", title="CLIP-MoE routing on held-out scenes"),
            "Share of tokens each expert receives as first and second choice, per block (the paper's Fig. 3). "
            "Expert 0 is the ancestry's FFN, expert j the FFN of MCL stage j.")
    stage_recs = {}
    from ..eval.tasks import mmvp_diagnostic

    mcl_dir = Path(moe_dir).parent / "mcl"
    n_exp = int(moe.config.num_experts)
    for j in range(n_exp):
        d = mcl_dir / f"stage{j}" / "model" if j else ancestry_dir
        stage_recs[f"expert {j}" + (" (ancestry)" if j == 0 else f" (stage {j})")] = mmvp_diagnostic(
            io.load(d), n=cfg.suite.pairs, seed=cfg.suite.seed, image_size=size)
    grouped_bars(ATTRS, {k: [v[a] for a in ATTRS] for k, v in stage_recs.items()}, plots / "experts_mmvp.png",
                 title="MMVP-style pair accuracy of each expert's dense stage model", ylabel="pair accuracy",
                 chance=0.25)
    r.image(plots / "experts_mmvp.png", "Per-attribute pair accuracy of the dense model each expert comes from "
            "(the paper's Table 1): what each MCL stage learned.")

    r.heading("Sample retrievals")
    examples = retrieval_examples({"ancestry": io.load(ancestry_dir), "CLIP-MoE": moe}, test, n_images=6, top=3)
    write_json(out / "retrieval_examples.json", examples)
    r.image(plot_retrieval_examples(examples, plots / "retrievals.png"),
            f"Held-out scenes and the top-3 of {examples['n_captions']} captions by each model (green: its own caption).")

    r.heading("Training curves")
    runs = {"ancestry": anc_run / "log.jsonl"}
    runs |= {f"MCL stage {j}": mcl_dir / f"stage{j}" / "train" / "log.jsonl" for j in range(1, n_exp)}
    runs |= {"CLIP-MoE routers": Path(moe_dir).parent / "log.jsonl",
             "learngene extraction (KD)": out / "learngene" / "extract" / "log.jsonl"}
    curves = plot_curves(runs, plots / "curves.png")
    if curves is not None:
        r.image(curves, "Training loss of every run (grey: logged, blue: smoothed).")

    r.heading("Wall time per phase")
    total = sum(v for k, v in phases.items() if k != "ancestry")
    r.table(["phase", "seconds", "minutes"], [[k, f"{v:.1f}", f"{v / 60:.1f}"] for k, v in phases.items()] +
            [["total without the ancestry", f"{total:.1f}", f"{total / 60:.1f}"]],
            caption="The ancestry phase only loads the cached model when it was trained earlier.")
    r.heading("Definitions")
    r.bullets(["**params stored**: every parameter on disk; **active / token**: stored minus the unused experts "
               "(E − k per MoE block).",
               "**MFLOPs**: analytic forward FLOPs per image / caption, multiply-adds counted as 2 (see `clipforge.cost`).",
               "**MM-LG** here is clipforge's reconstruction from the paper's abstract and the TLEG/SWS lineage.",
               f"Reproduce: `{command}`."])
    return r.write(out)

