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
from ..eval.suite import SuiteConfig, evaluate_builtin, evaluate_data, has_captions, headline
from ..files import write_json, write_text
from ..models import io
from .plots import _save


def measure(model: nn.Module, suite: SuiteConfig, test: Any = None) -> dict[str, Any]:
    """Metrics (full and flat) plus costs of one model: on the user's held-out `test` data when given
    (`evaluate_data`), else on the built-in suite."""
    metrics = evaluate_builtin(model, suite) if test is None else evaluate_data(model, test)
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
                     stage_dirs: Sequence[str | os.PathLike], suite: SuiteConfig, routing_samples: int = 500,
                     test: Any = None) -> dict:
    """Evaluate a DMU run directory: base vs CLIP-MoE, stage models' MMVP, routing; write the files.

    On the user's held-out `test` data when given (retrieval and/or zero-shot; routing on its pairs, no
    built-in task), else on the built-in suite. Models run on the CLIP-MoE's device (`--device`).
    """
    out = Path(out)
    device = next(model.parameters()).device
    base_model = (base if isinstance(base, nn.Module) else io.load(base)).to(device)
    result: dict[str, Any] = {"suite": suite.to_dict() if test is None else {"data": _name(test), "size": len(test)},
                              "models": {}}
    result["models"]["base"] = measure(base_model.eval(), suite, test)
    result["models"]["clip_moe"] = measure(model.eval(), suite, test)
    stages = _stages_mmvp(result, model, stage_dirs, suite) if test is None else {}
    result["stages_mmvp"] = stages
    _routing(result, out, model, suite, routing_samples, test)
    _plots(result, out, stages)
    write_json(out / "eval.json", result)
    write_text(out / "eval.md", _markdown(result, stages))
    return result


def _name(test: Any) -> str:
    return str(getattr(test, "source", None) or getattr(test, "name", "user data"))


def _stages_mmvp(result: dict[str, Any], model: nn.Module, stage_dirs: Sequence[str | os.PathLike],
                 suite: SuiteConfig) -> dict[str, Any]:
    """Each stage model's MMVP-style scores (stage 0 is the base's, measured already)."""
    from ..eval.tasks import mmvp_diagnostic
    from ..moe.dmu import stage_model

    size = int(model.config.vision_config.image_size)
    stages: dict[str, Any] = {}
    for j, d in enumerate(stage_dirs):
        if j == 0:
            stages["stage0"] = result["models"]["base"]["metrics"].get("mmvp")
            continue
        stages[f"stage{j}"] = mmvp_diagnostic(stage_model(d, model, j), n=suite.pairs, seed=suite.seed,
                                              image_size=size)
    return stages


def _routing(result: dict[str, Any], out: Path, model: nn.Module, suite: SuiteConfig, samples: int,
             test: Any) -> None:
    """Routing statistics on held-out pairs (the user's when given, else built-in scenes), with the heat map."""
    from ..data.scenes import ScenesDataset
    from ..moe.routing import load_shares, routing_stats

    size = int(model.config.vision_config.image_size)
    if test is None:
        test, where = ScenesDataset(split="test", size=min(samples, suite.scenes), seed=suite.seed + 1,
                                    image_size=size), "held-out scenes"
    elif has_captions(test):
        where = _name(test)
    else:
        return  # routing is counted over image and text tokens: a set without captions has no text
    stats = routing_stats(model, test, limit=samples)
    write_json(out / "routing.json", stats)
    result["routing"] = load_shares(stats)
    plot_routing(stats, out / "plots" / "routing.png", title=f"CLIP-MoE routing on {where}")


def _plots(result: dict[str, Any], out: Path, stages: dict[str, Any]) -> None:
    from .plots import grouped_bars, loss_curve, read_log

    if (out / "log.jsonl").is_file():
        loss_curve(read_log(out / "log.jsonl"), out / "plots" / "routers_loss.png", title="router training")
    if stages and all(v for v in stages.values()):
        attrs = [a for a in next(iter(stages.values())) if a != "mean"]
        grouped_bars(attrs, {name: [s[a] for a in attrs] for name, s in stages.items()} |
                     {"clip_moe": [result["models"]["clip_moe"]["metrics"]["mmvp"][a] for a in attrs]},
                     out / "plots" / "stages_mmvp.png", title="MMVP-style pair accuracy per stage model",
                     ylabel="pair accuracy", chance=0.25)


COLUMNS = ["fmnist_acc1", "zeroshot_acc1", "t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "mmvp_mean", "params_stored",
           "params_active_per_token", "flops_per_image", "latency_image_ms"]


def _markdown(result: dict[str, Any], stages: dict[str, Any]) -> str:
    rows = {name: {**m["headline"], **m["cost"]} for name, m in result["models"].items()}
    cols = [c for c in COLUMNS if any(c in r for r in rows.values())]
    where = result["suite"].get("data")
    text = ["# CLIP-MoE run", "", f"Evaluated on {where} ({result['suite']['size']:,} held-out samples)." if where
            else "Evaluated on the built-in suite.", "", markdown_table(rows, cols), ""]
    if stages:
        attrs = [a for a in next(iter(stages.values())) or {}]
        text += ["## MMVP-style pair accuracy per stage model", "",
                 markdown_table({k: v for k, v in stages.items() if v}, attrs), ""]
    return "\n".join(text)


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
