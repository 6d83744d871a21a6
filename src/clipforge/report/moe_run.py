"""The report of a CLIP-MoE run: what it gains and costs, measured the same way for every model.

`measure(model, suite)`: the built-in suite plus `cost.model_costs` (parameters stored and active per
token, analytic FLOPs, measured latency). `evaluate_moe_run(out, ...)`: the base and the CLIP-MoE on the
built-in suite, each stage model's MMVP-style scores, routing statistics and plots, written to
`out/eval.json`, `out/eval.md`, `out/routing.json` and `out/plots/`. `plot_routing`: the routing heat map.
(Here, above the methods: `moe dmu` runs it after DMU has finished, never one rank while the others wait.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..cost import model_costs
from ..errors import ClipforgeError
from ..eval.suite import SuiteConfig, evaluate_builtin, headline
from ..files import write_json, write_text
from ..models import io
from .plots import _save


def measure(model: nn.Module, suite: SuiteConfig) -> dict[str, Any]:
    """Suite metrics (full and flat) plus costs of one model."""
    metrics = evaluate_builtin(model, suite)
    return {"metrics": metrics, "headline": headline(metrics), "cost": model_costs(model)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(rows: dict[str, dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table: one row per model, the given columns of its flat record."""
    from ..markdown import table

    return "\n".join(table(["model", *columns], [[name, *(_fmt(rec.get(c, "")) for c in columns)]
                                                 for name, rec in rows.items()]))


def evaluate_moe_run(out: str | os.PathLike, base: nn.Module | str | os.PathLike, model: nn.Module,
                     stage_dirs: Sequence[str | os.PathLike], suite: SuiteConfig, routing_samples: int = 500) -> dict:
    """Evaluate a DMU run directory: base vs CLIP-MoE, stage models' MMVP, routing; write the files."""
    from ..data.scenes import ScenesDataset
    from ..eval.tasks import mmvp_diagnostic
    from ..moe.dmu import stage_model
    from ..moe.routing import load_shares, routing_stats
    from .plots import grouped_bars, loss_curve, read_log

    out = Path(out)
    base_model = base if isinstance(base, nn.Module) else io.load(base)
    result: dict[str, Any] = {"suite": suite.to_dict(), "models": {}}
    result["models"]["base"] = measure(base_model.eval(), suite)
    result["models"]["clip_moe"] = measure(model.eval(), suite)
    size = int(model.config.vision_config.image_size)
    stages: dict[str, Any] = {}
    for j, d in enumerate(stage_dirs):
        if j == 0:
            stages["stage0"] = result["models"]["base"]["metrics"].get("mmvp")
            continue
        stages[f"stage{j}"] = mmvp_diagnostic(stage_model(d, model, j), n=suite.pairs, seed=suite.seed,
                                              image_size=size)
    result["stages_mmvp"] = stages
    test = ScenesDataset(split="test", size=min(routing_samples, suite.scenes), seed=suite.seed + 1, image_size=size)
    stats = routing_stats(model, test)
    write_json(out / "routing.json", stats)
    result["routing"] = load_shares(stats)
    plot_routing(stats, out / "plots" / "routing.png", title="CLIP-MoE routing on held-out scenes")
    if (out / "log.jsonl").is_file():
        loss_curve(read_log(out / "log.jsonl"), out / "plots" / "routers_loss.png", title="router training")
    if stages and all(v for v in stages.values()):
        attrs = [a for a in next(iter(stages.values())) if a != "mean"]
        grouped_bars(attrs, {name: [s[a] for a in attrs] for name, s in stages.items()} |
                     {"clip_moe": [result["models"]["clip_moe"]["metrics"]["mmvp"][a] for a in attrs]},
                     out / "plots" / "stages_mmvp.png", title="MMVP-style pair accuracy per stage model",
                     ylabel="pair accuracy", chance=0.25)
    write_json(out / "eval.json", result)
    rows = {name: {**m["headline"], **m["cost"]} for name, m in result["models"].items()}
    cols = ["fmnist_acc1", "t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "mmvp_mean", "params_stored",
            "params_active_per_token", "flops_per_image", "latency_image_ms"]
    text = ["# CLIP-MoE run", "", markdown_table(rows, cols), ""]
    if stages:
        attrs = [a for a in next(iter(stages.values())) or {}]
        text += ["## MMVP-style pair accuracy per stage model", "",
                 markdown_table({k: v for k, v in stages.items() if v}, attrs), ""]
    write_text(out / "eval.md", "\n".join(text))
    return result


def plot_routing(stats: dict[str, Any], path: str | Path, title: str = "CLIP-MoE routing",
                 slots: Sequence[int] | None = None) -> Path:
    """Heat map(s) of token shares: rows = blocks of both towers, columns = experts, one panel per slot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(stats["top_k"])
    slots = list(range(k)) if slots is None else list(slots)
    rows, labels = [], []
    for tower, short in (("vision", "img"), ("text", "txt")):
        for b, block in enumerate(stats[tower]["blocks"]):
            if stats[tower]["share"]:
                rows.append([stats[tower]["share"][s][b] for s in slots])
                labels.append(f"{short} block {block}")
    if not rows:
        raise ClipforgeError("no routing statistics to plot (the model has no MoE block)")
    E = int(stats["num_experts"])
    fig, axes = plt.subplots(1, len(slots), figsize=(1.0 + 1.6 * E * len(slots), 0.32 * len(rows) + 1.6),
                             squeeze=False)
    names = {0: "first choice", 1: "second choice"}
    for i, s in enumerate(slots):
        ax = axes[0][i]
        m = [r[i] for r in rows]
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(E))
        ax.set_xticklabels([f"E{e}" for e in range(E)])
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if i == 0 else [], fontsize=7)
        for r, row in enumerate(m):
            for c, v in enumerate(row):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_title(names.get(s, f"choice {s + 1}"), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="share of tokens", fraction=0.05)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
