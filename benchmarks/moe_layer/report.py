"""results.md of the MoE layer benchmark from its result record.

    python -m benchmarks.moe_layer.report [--out DIR]   # results.md again from DIR/results.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import harness


def markdown(results: dict[str, Any]) -> str:
    """results.md: the command, the device and one table row per shape."""
    d = results["device"]
    where = f"{d['gpu']} (bf16 autocast)" if d["gpu"] else f"{d['cpu']}, {d['threads']} threads, fp32"
    lines = [f"`{results['command']}`", "",
             f"MoE FFN layer, E={results['experts']}, top-{results['top_k']}, forward + backward, median of "
             f"{results['repeats']} (after {results['warmup']} warm-up); {where}; torch {d['torch']}.", ""]
    if "note" in d:  # records from before the shared machine description have none
        lines += [harness.machine_line(d), ""]
    rows = [[r["name"], f"{r['batch'] * r['seq']} ({r['batch']} × {r['seq']})", f"{r['hidden']} / {r['intermediate']}",
             f"{r['ms']['moe']:.2f}", _ms(r, "moe_grouped"), f"{r['ms']['two_dense']:.2f}",
             f"{r['ms']['released_loop']:.2f}", f"{r['ratio_vs_two_dense']:.2f}", f"{r['ratio_vs_released_loop']:.2f}",
             f"{r['ratio_grouped_vs_moe']:.2f}" if "ratio_grouped_vs_moe" in r else "—", f"{r['max_abs_diff']:.1e}"]
            for r in results["shapes"]]
    lines += harness.table(["shape", "tokens (batch × seq)", "d / d_ff", "moe ms", "grouped ms", "two dense ms",
                            "released loop ms", "moe / two dense", "moe / released loop", "grouped / moe",
                            "max abs diff"], rows)
    if any(r["name"] == "vit-b16" for r in results["shapes"]) and not d["gpu"]:
        lines += ["", "ViT-B/16 runs at batch 8 on CPU (64 on CUDA) to keep a CPU run short."]
    return "\n".join(lines) + "\n"


def _ms(r: dict[str, Any], name: str) -> str:
    return f"{r['ms'][name]:.2f}" if name in r["ms"] else "—"  # records from before the grouped dispatch


def render(results: dict[str, Any], out: Path) -> None:
    """results.md in `out`."""
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md from a results directory's results.json."""
    return harness.report_main("moe_layer", render, argv)


if __name__ == "__main__":
    sys.exit(main())
