"""results.md of the performance benchmark from its result record: one table per part.

    python -m benchmarks.perf.report [--out DIR]   # results.md again from DIR/results.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import harness


def markdown(results: dict[str, Any]) -> str:
    """results.md: the command, the machine, then one table per part."""
    m = results["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['threads']} threads"
    tr, ev, mo = results["train"], results["eval"], results["moe"]
    lines = [f"`{results['command']}`", "",
             f"{where}; torch {m['torch']}, transformers {m['transformers']}; load average at start "
             f"{m['load_average']}.", ""]
    if "note" in m:  # records from before the shared machine description have none
        lines += [harness.machine_line(m), ""]
    lines += ["## Training step: clipforge `train()` vs a bare transformers loop", "",
              f"Same model, same pre-collated batch, amp {tr['amp']}; median ms/step over {tr['rounds']} round(s) "
              f"× {tr['steps']} steps, after {tr['warmup']} warm-up step(s) per run. Goal: overhead ≤ "
              f"{tr['goal']:.0%}.", ""]
    lines += harness.table(["arch", "batch", "clipforge ms/step", "bare ms/step", "overhead", "within goal"], [
        [r["arch"], r["batch"], f"{r['ms_per_step']['clipforge']:.2f}", f"{r['ms_per_step']['bare']:.2f}",
         f"{r['overhead']:+.1%}", "yes" if r["within_goal"] else "no"] for r in tr["cases"]])
    lines += ["", "## Evaluation embedding throughput", "",
              f"`embed_images` / `embed_texts` on {ev['arch']} (fresh weights), {ev['n']} scenes test images and "
              f"their first captions, median of {ev['repeats']} pass(es); batch sizes {ev['image_batch_size']} / "
              f"{ev['text_batch_size']} (the defaults).", ""]
    lines += harness.table(["arch", "n", "images/s", "captions/s"],
                           [[ev["arch"], ev["n"], f"{ev['images_per_s']:.0f}", f"{ev['captions_per_s']:.0f}"]])
    lines += ["", "## MoE FFN layer (benchmarks/moe_layer)", "",
              f"E={mo['experts']}, top-{mo['top_k']}, forward + backward, median of {mo['repeats']} "
              f"(after {mo['warmup']} warm-up).", ""]
    lines += harness.table(["shape", "tokens", "d / d_ff", "moe ms", "two dense ms", "released loop ms",
                            "moe / two dense", "moe / released loop"], [
        [r["name"], r["batch"] * r["seq"], f"{r['hidden']} / {r['intermediate']}", f"{r['ms']['moe']:.2f}",
         f"{r['ms']['two_dense']:.2f}", f"{r['ms']['released_loop']:.2f}", f"{r['ratio_vs_two_dense']:.2f}",
         f"{r['ratio_vs_released_loop']:.2f}"] for r in mo["shapes"]])
    if "options" in results:
        lines += options_markdown(results["options"]) + profile_markdown(results["profile"])
    for r in results.get("reruns", []):
        mr = r["machine"]
        lines += ["", f"Parts {', '.join(r['parts'])} rerun by `{r['command']}` ({mr['threads']} thread(s); load "
                      f"average at start {mr['load_average']}); they replace that run's numbers above."]
    return "\n".join(lines) + "\n"


def options_markdown(options: dict[str, Any]) -> list[str]:
    """The section of the speed options (step_options.py's measurement)."""
    pk = options["peaks"]
    nd = options["new_default"]
    # a record from before the kernel was chosen per model holds one kernel for all
    attn = nd["attn"] if isinstance(nd["attn"], str) else ", ".join(f"{a} {k}" for a, k in nd["attn"].items())
    lines = ["", "## Training step under each speed option", "",
             f"`train()` on a fixed pre-collated batch, median ms/step; FLOPs of one forward + backward (torch "
             f"FlopCounterMode) ÷ that time. Matmul peaks measured in this run, {pk['threads']} thread(s): fp32 "
             f"{pk['float32']['gflops']:.0f} GFLOP/s (n={pk['float32']['n']}), bf16 {pk['bfloat16']['gflops']:.1f} "
             f"GFLOP/s (n={pk['bfloat16']['n']}; native bf16: {'yes' if pk['native_bf16'] else 'no, emulated'}). "
             f"New default here: amp {nd['amp']}, AdamW {nd['optimizer']}, compile {nd['compile']}, attention "
             f"{attn}. 'first step' includes compiling where compile is on.", ""]
    return lines + harness.table(
        ["arch", "batch", "option", "ms/step", "× vs today", "GFLOP/s", "% fp32 peak", "% bf16 peak", "first step s"],
        [[r["arch"], r["batch"], r["option"], f"{r['ms_per_step']:.1f}", f"{r['speedup_vs_today']:.2f}",
          f"{r['gflops']:.1f}", f"{r['share_fp32_peak']:.0%}", f"{r['share_bf16_peak']:.0%}",
          f"{r['first_step_s']:.1f}"]
         for case in options["cases"] for r in case["rows"]])


def profile_markdown(prof: dict[str, Any]) -> list[str]:
    """The section of the step profile: time by kind, the token embedding, the data path."""
    lines = ["", f"## Where the {prof['arch']} step's time goes (torch.profiler, batch {prof['batch']})", "",
             f"Self CPU time per step by kind, mean of {prof['profiled_steps']} profiled step(s) (the profiler "
             f"adds overhead to small ops; 'unprofiled' is the same step timed without it). Text trimmed to "
             f"{prof['text_tokens']} tokens.", ""]
    opts = prof["optimizers"]
    names = list(opts)
    last = opts[names[-1]]
    kinds = list(dict.fromkeys(k for n in names for k in opts[n]["categories_ms"]))
    rows = [[k] + [f"{opts[n]['categories_ms'].get(k, 0.0):.1f}" for n in names]
            + [f"{last['categories_ms'].get(k, 0.0) / last['profiled_self_ms']:.1%}"] for k in kinds]
    rows.append(["**total (profiled)**"] + [f"{opts[n]['profiled_self_ms']:.1f}" for n in names] + [""])
    rows.append(["step, unprofiled"] + [f"{opts[n]['step_ms_unprofiled']:.1f}" for n in names] + [""])
    lines += harness.table(["kind"] + [f"{n} AdamW ms" for n in names] + [f"share ({names[-1]})"], rows)
    labels = (("adamw_all_params_ms", "AdamW step, all parameters (ms)"),
              ("adamw_token_embedding_ms", "AdamW step, token embedding alone (ms)"),
              ("clip_token_embedding_ms", "gradient-norm of the token embedding alone (ms)"),
              ("token_embedding_rows_with_grad", "rows with a gradient in this batch"))
    lines += [""] + harness.table(["token embedding (49,408 × width)"] + names, [
        [label] + [f"{opts[n][key]:.1f}" if isinstance(opts[n][key], float) else str(opts[n][key]) for n in names]
        for key, label in labels])
    lines += [""] + harness.table(["data path, one batch (main process, `num_workers=0`)", "ms"],
                                  [[k, f"{v:.0f}"] for k, v in prof["data_ms"].items()])
    return lines


def render(results: dict[str, Any], out: Path) -> None:
    """results.md in `out`."""
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md from a results directory's results.json."""
    return harness.report_main("perf", render, argv)


if __name__ == "__main__":
    sys.exit(main())
