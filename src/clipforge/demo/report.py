"""The demo's report: verdicts first, then the family (a quality and a cost table), the plots, sample
retrievals, wall time per phase.

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
from .ancestry import shown_cache_path

CURVE_SMOOTH_FROM = 40  # logged points from which a moving average says more than the points themselves
ATTRS = ["colour", "shape", "size", "fill", "position", "orientation", "count", "binding", "relation"]


def _pct(x: float | None) -> str:
    """A fraction as a percentage cell (the column header says "%")."""
    return "–" if x is None else f"{100 * x:.1f}"


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.1f}"


def _ms(c: dict[str, Any], key: str) -> str:
    return f"{c[key]:.3f}" if key in c else "–"


# headline key of a model's task accuracy → (short name for the table, long name for captions and legends)
TASKS = {"fmnist_acc1": ("zero-shot", "Fashion-MNIST zero-shot"),
         "fmnist_probe_acc1": ("linear probe", "Fashion-MNIST linear probe"),
         "count_probe_acc1": ("count probe", "object counting from captions, linear probe")}


def _quality(rec: dict[str, Any]) -> tuple[str, float | None]:
    """(short task name, accuracy) of a record: zero-shot for CLIPs, a probe for one-tower models."""
    h = rec["headline"]
    for key, (short, _) in TASKS.items():
        if key in h:
            return short, h[key]
    return "–", None


def quality_table(records: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Model by model: held-out scenes retrieval both ways, task accuracy, MMVP mean (all in %)."""
    cols = ["model"] + [f"{d} R@{k} (%)" for d in ("T→I", "I→T") for k in (1, 5, 10)] + [
        "accuracy (%)", "accuracy on", "MMVP mean (%)"]
    rows = []
    for name, r in records.items():
        h = r["headline"]
        task, acc = _quality(r)
        rows.append([name, *[_pct(h.get(f"{d}_r{k}")) for d in ("t2i", "i2t") for k in (1, 5, 10)],
                     _pct(acc), task, _pct(h.get("mmvp_mean"))])
    return cols, rows


def style_table(records: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]] | None:
    """R@1 both ways per caption style (full / alt-text / dense), or None when only full captions were measured."""
    styles = [(p, n) for p, n in (("", "full"), ("alt_", "alt-text"), ("dense_", "dense"))
              if any(f"{p}t2i_r1" in r["headline"] for r in records.values())]
    if len(styles) < 2:
        return None
    cols = ["model"] + [f"{n} {d} R@1 (%)" for _, n in styles for d in ("T→I", "I→T")]
    rows = [[name] + [_pct(r["headline"].get(f"{p}{d}_r1")) for p, _ in styles for d in ("t2i", "i2t")]
            for name, r in records.items() if "t2i_r1" in r["headline"]]
    return cols, rows


def cost_table(records: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Model by model: parameters stored / active, analytic FLOPs and measured latency per sample."""
    cols = ["model", "kind", "params stored", "params active / token", "MFLOPs / image", "MFLOPs / caption",
            "ms / image", "ms / caption"]
    rows = [[name, r["kind"], f"{r['cost']['params_stored']:,}", f"{r['cost']['params_active_per_token']:,}",
             _g(r["cost"].get("flops_per_image")), _g(r["cost"].get("flops_per_caption")),
             _ms(r["cost"], "latency_image_ms"), _ms(r["cost"], "latency_caption_ms")] for name, r in records.items()]
    return cols, rows


def _marker(name: str, rec: dict[str, Any]) -> str:
    return "s" if "MoE" in name else {"clip": "o", "vision": "^", "text": "v"}.get(rec["kind"], "D")


def plot_tradeoff(records: dict[str, dict[str, Any]], path: Path) -> Path:
    """Quality (in %) against active parameters per token, one colour and marker per model, one shared legend.

    No text next to the points: family members often sit at nearly the same size and score, and labels
    there overlap. Markers shrink in legend order, so coincident points still show as concentric rings."""
    import matplotlib.pyplot as plt

    from ..report.plots import count_axis

    # Under 10 in wide at 120 dpi: shown near its own size at 1,300 px, so the text stays readable.
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), sharex=True)
    handles: dict[str, Any] = {}
    for i, (name, r) in enumerate(records.items()):
        h, active = r["headline"], r["cost"]["params_active_per_token"]
        style = {"marker": _marker(name, r), "color": f"C{i % 10}", "s": max(30, 150 - 16 * i), "zorder": 2 + i,
                 "edgecolors": "black", "linewidths": 0.6, "label": name}
        if "t2i_r1" in h and "i2t_r1" in h:
            handles[name] = axes[0].scatter(active, 50 * (h["t2i_r1"] + h["i2t_r1"]), **style)
        _, acc = _quality(r)
        if acc is not None:
            handles[name] = axes[1].scatter(active, 100 * acc, **style)
    axes[0].set_title("held-out scenes retrieval", fontsize=10)
    axes[0].set_ylabel("R@1, mean of T→I and I→T (%)")
    axes[1].set_title("task accuracy: Fashion-MNIST zero-shot (CLIPs),\n"
                      "linear probe (vision only), count probe (text only)", fontsize=10)
    axes[1].set_ylabel("top-1 accuracy (%)")
    count_axis(axes[0], [r["cost"]["params_active_per_token"] for r in records.values()], "parameters active per token")
    axes[1].set_xlabel("parameters active per token")
    for ax in axes:  # room above the highest point for the largest marker
        top = ax.dataLim.y1 if ax.has_data() else 0.0
        ax.set_ylim(0, top * 1.12 if top > 0 else 1)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, max(1, len(handles))), fontsize=9, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def curve_logs(runs: dict[str, Path]) -> dict[str, list[tuple[float, float]]]:
    """(step, loss) of every run whose log exists and logged a loss."""
    logs = {k: [(r["step"], float(r["loss"])) for r in read_log(p) if "loss" in r and "step" in r]
            for k, p in runs.items() if p.is_file()}
    return {k: v for k, v in logs.items() if v}


def verdict_section(r: Report, records: dict[str, dict[str, Any]], cfg: Any) -> None:
    """"What this run shows": one line per method and claim, decided from this run's numbers."""
    from .measure import item_counts
    from .verdicts import thresholds, verdicts

    quick = cfg.quick
    r.heading("What this run shows")
    found = verdicts(records, item_counts(cfg))
    if found:
        r.bullets([v.line() for v in found])
    else:
        r.paragraph("No claim could be decided: the records it needs were not measured in this run.")
    note = ("`--quick` trains at toy budgets: these lines show that the pipeline decides each claim, not how "
            "the methods fare. " if quick else "")
    r.paragraph(note + "Every figure is this run's own (tables below), in %; T→I is text-to-image retrieval, "
                "I→T image-to-text. " + thresholds())


def family_section(r: Report, records: dict[str, dict[str, Any]], cfg: Any) -> None:
    """The family as two tables, quality then cost, narrow enough that no column hides behind a scroll."""
    r.heading("The family")
    r.heading("Quality", level=3)
    tasks = "; ".join(f"{short}: {long}" for short, long in TASKS.values())
    r.table(*quality_table(records), caption=f"Retrieval: {cfg.suite.scenes:,} held-out test scenes (unseen "
            f"shape-colour combinations), recall in %. Accuracy in %, by task ({tasks}). MMVP: mean pair accuracy "
            "over the attributes below.")
    styles = style_table(records)
    if styles is not None:
        r.table(*styles, caption="Retrieval R@1 in % on the same held-out scenes captioned in each style "
                "(full, web alt-text, dense), the captions CLIP-MoE's fine-tuning is about.")
    r.heading("Cost", level=3)
    tokens = records[next(iter(records))]["cost"]["caption_tokens"]
    r.table(*cost_table(records), caption="Parameters stored on disk and active per token (MoE: the unused experts "
            f"left out). MFLOPs: analytic forward FLOPs (clipforge.cost), captions at {tokens} tokens. ms: measured "
            "forward time per sample at batch 64 on this machine.")


def curves_section(r: Report, runs: dict[str, Path], path: Path) -> None:
    """"Training curves": a panel per run that logged two steps or more, and the names of those left out."""
    from ..report.plots import loss_panels

    r.heading("Training curves")
    logs = curve_logs(runs)
    curves = loss_panels(logs, path, smooth_from=CURVE_SMOOTH_FROM)
    short = [k for k, v in logs.items() if len(v) < 2]
    skipped = f" Not drawn (a single logged step): {', '.join(short)}." if short else ""
    if curves is None:
        r.paragraph("No run logged its loss at two steps or more." + skipped)
        return
    # The caption names only what is drawn: grey points always, the blue average only for long runs.
    blue = ("; blue: their moving average" if any(len(v) >= CURVE_SMOOTH_FROM for v in logs.values()) else "")
    r.image(curves, f"Training loss against step of every run that logged at least two steps (grey: the logged "
            f"values{blue})." + skipped)


def mmvp_section(r: Report, records: dict[str, dict[str, Any]]) -> None:
    """The MMVP-style pair accuracy per attribute of every CLIP, in %."""
    rows = [[name] + [_pct(rec["headline"].get(f"mmvp_{a}")) for a in ATTRS] + [_pct(rec["headline"].get("mmvp_mean"))]
            for name, rec in records.items() if "mmvp_mean" in rec["headline"]]
    r.heading("What each model sees: MMVP-style pairs per attribute")
    r.table(["model"] + ATTRS + ["mean"], rows,  # one unit for the whole table, said in its caption
            caption="Pair accuracy in % (two images differing in one attribute; both must pick their own caption; "
                    "chance 25 %). Binding, relation and count are what converged contrastive models miss.")


def moe_section(r: Report, out: Path, cfg: Any, ancestry_dir: Path, moe_dir: Path) -> tuple[Any, Any]:
    """"Inside the CLIP-MoE": routing maps and each expert's stage model on MMVP; returns (the MoE, test scenes)."""
    from ..data.scenes import ScenesDataset
    from ..eval.tasks import mmvp_diagnostic
    from ..files import write_json
    from ..models import io
    from ..moe.dmu import stage_model
    from ..moe.routing import routing_stats
    from ..report.moe_run import plot_routing
    from ..report.plots import grouped_bars

    plots = out / "plots"
    r.heading("Inside the CLIP-MoE")
    from ..distributed import default_device

    moe = io.load(moe_dir).to(default_device()).eval()  # --device; batches follow the model
    size = int(moe.config.vision_config.image_size)
    test = ScenesDataset(split="test", size=min(500, cfg.suite.scenes), seed=1, image_size=size)
    stats = routing_stats(moe, test)
    write_json(out / "clip_moe" / "routing.json", stats)
    r.image(plot_routing(stats, plots / "routing.png", title="CLIP-MoE routing on held-out scenes"),
            "Share of tokens each expert receives as first and second choice, per block (the paper's Fig. 3). "
            "Expert 0 is the ancestry's FFN, expert j the FFN of MCL stage j.")
    stage_recs = {}
    for j in range(int(moe.config.num_experts)):
        dense = stage_model(Path(moe_dir).parent / "mcl" / f"stage{j}" / "model", moe, j) if j \
            else io.load(ancestry_dir).to(moe.device)
        stage_recs[f"expert {j}" + (" (ancestry)" if j == 0 else f" (stage {j})")] = mmvp_diagnostic(
            dense, n=cfg.suite.pairs, seed=cfg.suite.seed, image_size=size)
    grouped_bars(ATTRS, {k: [v[a] for a in ATTRS] for k, v in stage_recs.items()}, plots / "experts_mmvp.png",
                 title="MMVP-style pair accuracy of each expert's dense stage model", ylabel="pair accuracy",
                 chance=0.25, percent=True)
    r.image(plots / "experts_mmvp.png", "Per-attribute pair accuracy in % of the dense model each expert comes "
            "from (the paper's Table 1): what each MCL stage learned.")
    return moe, test


def auxnet_section(r: Report, lg_dir: Path) -> None:
    """"The learngene's Aux-Net": its quality at step 0 (the least-squares fit), along and at the end of the
    extraction, beside the ancestry's on the same data (from the learngene's provenance)."""
    import json

    meta = json.loads((lg_dir / "learngene.json").read_text())
    prov, lg_cfg = meta["provenance"], meta["config"]
    q = prov.get("auxnet_quality")
    r.heading("The learngene's Aux-Net")
    if not q:
        r.paragraph("This learngene's extraction did not measure its Aux-Net.")
        return
    keys = [("mean_retrieval_recall@1", "scenes R@1, mean of T→I and I→T (%)"),
            ("zeroshot_acc1", "Fashion-MNIST zero-shot (%)")]
    rows = [[f"Aux-Net at step {step}" + (" (least-squares init)" if step == 0 else ""),
             *[_pct(m.get(k)) for k, _ in keys]] for step, m in q["curve"]]
    rows.append(["ancestry", *[_pct(q["ancestry"].get(k)) for k, _ in keys]])
    fit = prov.get("init_fit") or {}
    resid = "; ".join(f"{t} {100 * v:.0f}%" for t, v in fit.get("relative_residual", {}).items()) \
        if isinstance(fit.get("relative_residual"), dict) else ""
    data = q.get("data", {})
    sampled = prov["settings"].get("sample_depths")
    r.table(["model", *[n for _, n in keys]], rows, caption=(
        f"The Aux-Net (the learngene expanded to {lg_cfg['aux_depth_vision']}+{lg_cfg['aux_depth_text']} blocks"
        + (f"; trained at depths {', '.join(map(str, sampled))}, one sampled per step" if sampled else "")
        + f") along its {prov['steps']}-step extraction, and the ancestry, on the same held-out data "
        f"({data.get('retrieval', 'scenes')}; {data.get('zeroshot', 'Fashion-MNIST')}). Init: {prov['init']}"
        + (f", relative residual of the fit per tower: {resid}" if resid else "") + "."))


def _widths(cfg: Any, compute: dict[str, Any] | None) -> str:
    w = (compute or {}).get("widths")
    if not w:
        return "the ancestry's widths"
    return (f"{cfg.width_fraction:.0%} of the ancestry's widths in whole heads (vision {w['ancestry']['vision']} → "
            f"{w['learngene']['vision']}, text {w['ancestry']['text']} → {w['learngene']['text']})")


def made_section(r: Report, records: dict[str, dict[str, Any]], cfg: Any, ancestry_dir: Path, moe_dir: Path,
                 compute: dict[str, Any] | None) -> None:
    """"What was made": one bullet per method, with the settings this run used."""
    r.heading("What was made")
    plan = (compute or {}).get("clip_moe") or {}
    scale = plan.get("logit_scale")
    made = [
        f"**ancestry**: the demo CLIP trained on scenes + Fashion-MNIST (`{shown_cache_path(ancestry_dir)}`"
        + ("; a toy budget: `--quick` checks the pipeline, not the methods)." if cfg.quick else
           ", to convergence)."),
        f"**CLIP-MoE** (grow): Diversified Multiplet Upcycling of the ancestry on {cfg.train_scenes:,} new scenes, "
        f"batches of {plan.get('batch')}: {plan.get('stages')} MCL stages of {plan.get('stage_steps')} "
        f"fine-tune the FFNs on cluster-pure batches ({plan.get('clusters')} clusters per stage), the stage FFNs "
        f"become experts, only routers train ({plan.get('router_steps')} steps); the logit scale "
        + (f"fixed at the ancestry's learned {scale:.1f}" if scale else "learned") + f" (`{moe_dir}`).",
        f"**direct FT (full)**: the baseline a user would try first, every weight of the ancestry fine-tuned on the "
        f"same scenes for as many steps as DMU trained ({plan.get('total_steps')}: equal compute).",
        f"**MM-LG** (shrink / reshape): a learngene at {_widths(cfg, compute)} fitted to the ancestry's layers by "
        f"least squares ({cfg.extract_stages} stages), then extracted by distillation ({cfg.extract_steps} steps, "
        "KD + feature term"
        + (", the Aux-Net's depth sampled per step" if cfg.sample_depths else "") + "), then descendants "
        f"initialised from it at several depths and modalities, each pre-trained {cfg.pretrain_steps} steps "
        "(half KD from the ancestry, a lower lr, no warm-up)."]
    sc = (compute or {}).get("scratch")
    if sc:
        b = sc["budget_flops"]
        made.append(f"**{next((n for n in records if n.startswith('Scratch')), 'Scratch')}**: a randomly "
                    f"initialised CLIP of {sc['of']}'s shape, pre-trained contrastively for the same training FLOPs "
                    f"as {sc['of']} cost: its share of the extraction ({b['extraction_share'] / 1e12:.2f} TFLOP) plus "
                    f"its pre-training ({b['pretrain'] / 1e12:.2f} TFLOP), {sc['steps']} steps "
                    f"({sc['train_flops'] / 1e12:.2f} TFLOP).")
    if any(n.startswith("CLIP-MoE of ") for n in records):
        made.append("**CLIP-MoE of an MM-LG descendant**: the two methods composed, DMU applied to the middle "
                    "descendant.")
    r.bullets(made)


def samples_section(r: Report, out: Path, ancestry_dir: Path, moe: Any, test: Any) -> None:
    """"Sample retrievals": held-out scenes and the ancestry's and the CLIP-MoE's top captions."""
    from ..files import write_json
    from ..models import io
    from ..report.samples import plot_retrieval_examples, retrieval_examples

    r.heading("Sample retrievals")
    examples = retrieval_examples({"ancestry": io.load(ancestry_dir), "CLIP-MoE": moe}, test, n_images=6, top=3)
    write_json(out / "retrieval_examples.json", examples)
    r.image(plot_retrieval_examples(examples, out / "plots" / "retrievals.png"),
            f"Held-out scenes and the top-3 of {examples['n_captions']} captions by each model "
            "(green: its own caption).")


def training_logs(out: Path, anc_run: Path, moe_dir: Path, n_experts: int) -> dict[str, Path]:
    """The log.jsonl of every training run the demo made, by the name its curve gets."""
    mcl_dir = Path(moe_dir).parent / "mcl"
    runs = {"ancestry": anc_run / "log.jsonl"}
    runs |= {f"MCL stage {j}": mcl_dir / f"stage{j}" / "train" / "log.jsonl" for j in range(1, n_experts)}
    runs |= {"CLIP-MoE routers": Path(moe_dir).parent / "log.jsonl",
             "direct FT (full)": out / "direct_ft" / "log.jsonl",
             "learngene extraction (KD)": out / "learngene" / "extract" / "log.jsonl",
             "Scratch": out / "scratch" / "run" / "log.jsonl"}
    return runs


def closing_sections(r: Report, phases: dict[str, float], command: str) -> None:
    """"Wall time per phase" and "Definitions" (which ends with the command that reproduces the report)."""
    r.heading("Wall time per phase")
    total = sum(v for k, v in phases.items() if k != "ancestry")
    r.table(["phase", "seconds", "minutes"], [[k, f"{v:.1f}", f"{v / 60:.1f}"] for k, v in phases.items()] +
            [["total without the ancestry", f"{total:.1f}", f"{total / 60:.1f}"]],
            caption="The ancestry phase only loads the cached model when it was trained earlier.")
    r.heading("Definitions")
    r.bullets(["**params stored**: every parameter on disk; **params active / token**: stored minus the unused experts "
               "(E − k per MoE block).",
               "**MFLOPs**: analytic forward FLOPs per image / caption, multiply-adds counted as 2 "
               "(see `clipforge.cost`).",
               "**MM-LG** here is clipforge's reconstruction from the paper's abstract and the TLEG/SWS lineage.",
               f"Reproduce: `{command}`."])


def write_report(out: Path, records: dict[str, dict[str, Any]], phases: dict[str, float], cfg: Any,
                 anc_run: Path, cached: bool, ancestry_dir: Path, moe_dir: Path, lg_dir: Path | None = None,
                 compute: dict[str, Any] | None = None, threads: int | None = None) -> tuple[Path, Path]:
    """Assemble plots and tables into `out/report.md` and `out/report.html` (`threads`: the run's torch threads,
    default this process's)."""
    command = "clipforge demo" + (" --quick" if cfg.quick else "") + f" --out {out}"
    r = Report("clipforge demo: one CLIP becomes a family")
    verdict_section(r, records, cfg)
    r.contents()  # after the verdicts: they are what a reader opens the report for
    r.paragraph(f"Made by `{command}` (ancestry from `{shown_cache_path(anc_run)}`, "
                f"{'cached from an earlier run' if cached else 'trained by this run'}) with torch {torch.__version__} "
                f"on {platform.machine()} ({threads or torch.get_num_threads()} threads, "
                f"Python {sys.version.split()[0]}). "
                "Every number below is read from the files this command wrote under "
                f"`{out}` (eval/*.json, the runs' log.jsonl, routing.json).")
    made_section(r, records, cfg, ancestry_dir, moe_dir, compute)

    family_section(r, records, cfg)
    if lg_dir is not None:
        auxnet_section(r, lg_dir)
    mmvp_section(r, records)

    r.heading("Size against quality")
    r.image(plot_tradeoff(records, out / "plots" / "tradeoff.png"), "Quality in % against parameters active per "
            "token, one colour and marker per model (■ CLIP-MoE, ● CLIP, ▲ vision only, ▼ text only); markers shrink "
            "in legend order, so models with the same numbers show as concentric rings.")

    moe, test = moe_section(r, out, cfg, ancestry_dir, moe_dir)
    samples_section(r, out, ancestry_dir, moe, test)
    curves_section(r, training_logs(out, anc_run, moe_dir, int(moe.config.num_experts)), out / "plots" / "curves.png")
    closing_sections(r, phases, command)
    return r.write(out)
