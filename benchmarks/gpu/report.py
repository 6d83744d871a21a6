"""results.md of the GPU check from its result record.

    python -m benchmarks.gpu.report --out benchmarks/gpu/results/<device-tag>   # results.md again from results.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import harness
from .plan import Plan

GIB = 2**30


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _rate(x: float) -> str:
    """Items per second, to three significant figures or whole items."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _gib(rec: dict[str, Any]) -> str:
    return "—" if "peak_memory_bytes" not in rec else f"{rec['peak_memory_bytes'] / GIB:.2f}"


def _rss_note(*recs: dict[str, Any]) -> str:
    """On a CPU: how much of the peak RSS the measuring process already held when the part began."""
    start = [r["rss_at_start_bytes"] for r in recs if "rss_at_start_bytes" in r]
    return "" if not start else (f" A CPU peak is the measuring process's ru_maxrss: {max(start) / GIB:.2f} GiB of it "
                                 f"was there before the part began (torch, transformers and clipforge imported).")


def _oom(rec: dict[str, Any]) -> str | None:
    return rec["error"] if rec.get("oom") else None


def header(results: dict[str, Any]) -> list[str]:
    """The command, the device, torch, the dtype and the plan's run facts."""
    d, m = results["device"], results["device"]["machine"]
    where = (f"**{d['gpu']}** ({d['gpu_memory_bytes'] / GIB:.0f} GiB, compute capability {d['capability']}), "
             f"CUDA {d['cuda']}" if d["device"] == "cuda" else f"**CPU** ({m['cpu']}), {results['threads']} threads")
    amp = "bf16 autocast" if d["amp"] == "bf16" else "fp32 (no autocast)"
    return [f"`{results['command']}`", "",
            f"Device: {where}; torch {m['torch']}. Training dtype: amp \"auto\" resolves to **{amp}** here. "
            f"{results['date']}, wall time {results['wall_time_s']:.0f} s (units from earlier records: "
            f"{', '.join(results['units_reused']) or 'none'}); measuring processes started by "
            f"{results['start_method']}.", "", harness.machine_line(m), ""]


def train_section(plan: Plan, rec: dict[str, Any], shapes: dict[str, str]) -> list[str]:
    rows = []
    for label, key in (("clipforge `train()`", "clipforge"), ("bare transformers loop", "bare")):
        r = rec[key]
        if _oom(r):
            rows.append([label, _oom(r), "", "", "", "", ""])
            continue
        rows.append([label, f"{r['median_ms']:.1f}", f"{r['samples_per_s']:.1f}", _gib(r), r["amp"], r["attention"],
                     r["adamw"] + ("" if r["grad_clip"] is None else f", clip {r['grad_clip']:g}")])
    rows.append(["clipforge / bare", _num(rec["ratio_ms"]), _num(rec["ratio_samples_per_s"]),
                 _num(rec["ratio_peak_memory"]), "", "", ""])
    kind = rec["clipforge"].get("memory_kind") or rec["bare"].get("memory_kind") or "peak memory"
    return ["## Training step", "",
            f"{shapes[plan.clip]}; batch {plan.train_batch} of synthetic images and full-length captions, "
            f"the same in both loops; median of {plan.steps} steps after {plan.warmup} warm-up. Each loop in its "
            f"own process; a step is timed from one batch hand-over to the next (device synchronised)."
            f"{_rss_note(rec['clipforge'], rec['bare'])}", "",
            *harness.table(["loop", "ms / step", "samples / s", f"peak GiB: {kind}", "amp", "attention", "AdamW"],
                           rows, [False, True, True, True, False, False, False]), ""]


def moe_section(plan: Plan, rec: dict[str, Any], shapes: dict[str, str]) -> list[str]:
    ms, rows = rec["ms"], []
    ratios = {"sparse": rec["ratio_sparse_over_two_dense"], "grouped": rec["ratio_grouped_over_two_dense"],
              "two_dense": 1.0}
    for name in ("sparse", "grouped", "two_dense"):
        if name in ms:
            rows.append([name, f"{ms[name]:.2f}", _num(ratios[name])])
        else:
            rows.append([name, rec["errors"].get(name, "—"), ""])
    note = "" if rec["grouped_kernel"] else " (width not a multiple of 8: grouped falls back to sparse)"
    return ["## MoE layer", "",
            f"clipforge's MoE FFN, {plan.experts} experts, top-{plan.top_k}, against two dense CLIP FFNs (top-2's "
            f"active compute) on the same {plan.moe_tokens} tokens ({plan.moe_batch} × {plan.moe_seq}), d "
            f"{plan.moe_hidden} / d_ff {plan.moe_intermediate} ({plan.moe_act}), forward + backward, amp "
            f"{rec['amp']}; median of {plan.steps} after {plan.warmup} warm-up{note}. Tokens per expert: "
            f"{rec['expert_load']}.", "",
            *harness.table(["layer", "ms", "/ two dense"], rows, [False, True, True]), ""]


def eval_section(plan: Plan, rec: dict[str, Any], shapes: dict[str, str]) -> list[str]:
    rows = [["embed_images (PIL images, the model's preprocessing)", _rate(rec['images_per_s']),
             str(plan.eval_images), str(plan.eval_image_batch)],
            ["embed_texts (clipforge's tokenizer, context padded)", _rate(rec['texts_per_s']), str(plan.eval_texts),
             str(plan.eval_text_batch)],
            ["image tower alone (pixels already on the device)", _rate(rec['tower_images_per_s']),
             str(rec["tower_images"]), str(plan.eval_image_batch)]]
    return ["## Evaluation throughput", "",
            f"{shapes[plan.clip]}, {rec['dtype']}, `clipforge.eval.embed` after one warm-up batch; "
            f"embed_images reads a dataset with {plan.eval_workers} DataLoader workers.", "",
            *harness.table(["pass", "items / s", "items", "batch"], rows, [False, True, True, True]), ""]


def router_section(plan: Plan, rec: dict[str, Any], shapes: dict[str, str]) -> list[str]:
    rows = []
    for label, key in (("off", "plain"), ("on", "checkpointed")):
        r = rec[key]
        rows.append([label, _oom(r), "", ""] if _oom(r) else [label, _gib(r), f"{r['median_ms']:.1f}",
                                                               f"{r['samples_per_s']:.1f}"])
    rows.append(["on / off", _num(rec["ratio_peak_memory"]), _num(rec["ratio_ms"]), ""])
    some = rec["plain"] if "params" in rec["plain"] else rec["checkpointed"]
    kind = some.get("memory_kind", "peak memory")
    sizes = (f" {some['params'] / 1e6:.1f}M parameters ({some['weights_bytes'] / GIB:.2f} GiB of weights), "
             f"{some['trainable_params']:,} trainable (the routers)," if "params" in some else "")
    return ["## Router training: activation checkpointing", "",
            f"A CLIP-MoE of {shapes[plan.router_clip]}, {plan.experts} experts, top-{plan.top_k} in every "
            f"block, random init;{sizes} batch {plan.router_batch}, clipforge's router step (InfoNCE + balance loss) "
            f"through `train()`, checkpointing by `clipforge.train.options.execution(grad_checkpointing=True)`; "
            f"median of {plan.router_steps} steps after {plan.router_warmup} warm-up; each in its own process."
            f"{_rss_note(rec['plain'], rec['checkpointed'])}", "",
            *harness.table(["activation checkpointing", f"peak GiB: {kind}", "ms / step", "samples / s"], rows,
                           [False, True, True, True]), ""]


SECTIONS = {"train_step": train_section, "moe_layer": moe_section, "eval_throughput": eval_section,
            "router_checkpointing": router_section}


def markdown(results: dict[str, Any]) -> str:
    """results.md: the header, then one section per unit with a record; failed units named at the end."""
    plan = Plan(**results["plan"])
    lines = header(results)
    for unit, section in SECTIONS.items():
        if unit in results["units"]:
            lines += section(plan, results["units"][unit], results["device"]["shapes"])
    for unit, error in results.get("failed", {}).items():
        lines += [f"**{unit} failed:** {error}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render(results: dict[str, Any], out: Path) -> None:
    """results.md in `out`."""
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md from a results directory's results.json."""
    return harness.report_main("gpu", render, argv)


if __name__ == "__main__":
    sys.exit(main())
