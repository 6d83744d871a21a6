"""Plots people would rather look at than tables: training curves, bars, heat maps.

Every function reads plain data (often a run's `log.jsonl`) and writes a PNG atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

from ..files import atomic_path

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a `log.jsonl` file (a truncated last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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
               key: str = "loss", extra: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """Loss against step (raw and smoothed), with optional extra series (e.g. eval metrics) on a 2nd axis."""
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
        ax2.set_ylabel("metric")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], path: str | os.PathLike,
                 title: str = "", ylabel: str = "", errors: dict[str, Sequence[float]] | None = None,
                 chance: float | None = None) -> Path:
    """Bars per group (e.g. per attribute) for several series (e.g. models), with optional error bars."""
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, n / 2)), 4))
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        err = errors.get(name) if errors else None
        ax.bar(xs, vals, width, label=name, yerr=err, capsize=2 if err else 0)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=0.8, label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def heatmap(matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str],
            path: str | os.PathLike, title: str = "", cbar: str = "", fmt: str = "{:.2f}") -> Path:
    """A labelled heat map with the values written in the cells."""
    rows, cols = len(row_labels), len(col_labels)
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * cols + 2), max(3, 0.35 * rows + 1.5)))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(cols))
    ax.set_xticklabels(col_labels)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_labels, fontsize=7)
    if rows * cols <= 400:
        for r in range(rows):
            for c in range(cols):
                ax.text(c, r, fmt.format(matrix[r][c]), ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(title)
    return _save(fig, path)
