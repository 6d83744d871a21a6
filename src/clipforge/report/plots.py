"""Plots people would rather look at than tables: training curves, bars, heat maps.

Every function reads plain data (often a run's `log.jsonl`) and writes a PNG atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

from ..files import atomic_path
from ..train.runs import read_log  # noqa: F401  (re-exported: plots read training logs)

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (window clipped at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_curve(records: Iterable[dict], path: str | os.PathLike, title: str = "training loss",
               key: str = "loss", extra: dict[str, list[tuple[int, float]]] | None = None,
               extra_label: str = "metric", extra_max: float = 1.0) -> Path:
    """Loss against step (raw and smoothed), with optional extra series (e.g. eval metrics) on a 2nd axis
    labelled `extra_label`, from 0 to `extra_max` (100 for series in %)."""
    recs = [r for r in records if key in r and "step" in r]
    steps = [r["step"] for r in recs]
    vals = [float(r[key]) for r in recs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, vals, color="0.75", lw=0.8, label=key)
    if vals:
        ax.plot(steps, smooth(vals, max(1, len(vals) // 20)), color="C0", lw=2, label=f"{key} (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    if extra:
        ax2 = ax.twinx()
        for i, (name, pts) in enumerate(extra.items()):
            if pts:
                xs, ys = zip(*pts)
                ax2.plot(xs, ys, "o-", color=f"C{i + 1}", label=name)
        ax2.set_ylabel(extra_label)
        ax2.set_ylim(0, extra_max)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], path: str | os.PathLike,
                 title: str = "", ylabel: str = "", errors: dict[str, Sequence[float]] | None = None,
                 chance: float | None = None, percent: bool = False,
                 styles: dict[str, dict] | None = None) -> Path:
    """Bars per group (e.g. per attribute) for several series (e.g. models), with optional error bars.

    `percent`: values, errors and `chance` are fractions, drawn ×100 on a "%" axis. `styles`: matplotlib bar
    keywords per series (e.g. one colour per method, a hatch per budget), for more series than colours."""
    k = 100.0 if percent else 1.0
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, n / 2)), 4))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        err = [k * e for e in errors[name]] if errors and errors.get(name) is not None else None
        ax.bar(xs, [k * v for v in vals], width, label=name, yerr=err, capsize=2 if err else 0,
               **(styles or {}).get(name, {}))
    if chance is not None:
        ax.axhline(k * chance, color="k", ls="--", lw=0.8, label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20)
    ax.set_ylabel(f"{ylabel} (%)" if percent and ylabel else ylabel)
    ax.set_title(title)
    # Outside the axes, so the legend never covers a bar (bbox_inches="tight" keeps it in the file).
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def count_label(v: float, _pos: object = None) -> str:
    """A parameter count for a tick: 24960 → "25k", 1.6e6 → "1.6M"."""
    return f"{v / 1e6:.2g}M" if v >= 1e6 else f"{v / 1e3:.3g}k" if v >= 1e3 else f"{v:.0f}"


def count_axis(ax, values: Sequence[float], label: str) -> None:
    """A log x axis for parameter counts, with readable ticks even when all values lie close together."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    lo, hi = min(values), max(values)
    ax.set_xscale("log")
    # A margin of ×1.6 each side puts at least one 1-2-5 tick inside, however close the values are.
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(count_label))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def loss_panels(logs: dict[str, Sequence[tuple[float, float]]], path: str | os.PathLike, ylabel: str = "training loss",
                smooth_from: int = 40) -> Path | None:
    """One panel per run with at least two logged points: the logged values (grey, with markers when few)
    and, for runs of at least `smooth_from` points, a moving average (blue). None when no run qualifies."""
    from matplotlib.ticker import MaxNLocator

    logs = {k: v for k, v in logs.items() if len(v) >= 2}
    if not logs:
        return None
    n = len(logs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for ax, (name, pts) in zip(flat, logs.items()):
        steps, vals = [p[0] for p in pts], [float(p[1]) for p in pts]
        few = len(vals) < smooth_from
        ax.plot(steps, vals, color="0.55", lw=1.0, marker="o" if few else None, ms=3, label="logged")
        if not few:
            ax.plot(steps, smooth(vals, max(2, len(vals) // 20)), color="C0", lw=1.8, label="moving average")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "10.25" ticks
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    for ax in flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


