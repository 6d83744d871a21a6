"""results.md of the real-shape benchmark from its result record.

    python -m benchmarks.realshape.report [--out DIR]   # results.md again from DIR/results.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import harness

RUNS = ("dmu", "route", "route-gc", "extract-select", "extract-project", "descend-select", "descend-project")


def size(n: int | float | None) -> str:
    """Bytes as GiB / MiB / KiB."""
    if n is None:
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def millions(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _s(x: float | None, fmt: str = ".1f") -> str:
    return "" if x is None else format(x, fmt)


def runs_table(r: dict[str, Any]) -> list[str]:
    rows = []
    for name in (n for n in RUNS if n in r["units"]):  # records from before a unit existed lack it
        u = r["units"][name]
        rows.append([name, _s(u["wall_s"]), _s(u["cpu_s"]), str(u.get("steps", "")) or "—",
                     _s(u.get("s_per_step"), ".2f") or "—", _s(u.get("s_per_step_after_first"), ".2f") or "—",
                     size(u["peak_rss_bytes"]), size(u["disk_bytes"]), size(u["peak_disk_bytes"])])
    return harness.table(["unit", "wall s", "CPU s", "train steps", "s/step", "s/step after the first",
                          "peak RSS", "disk at the end", "peak disk (sampled)"], rows,
                         [False] + [True] * 8)


def dmu_table(u: dict[str, Any]) -> list[str]:
    rows = [[name, str(ph["steps"]), _s(ph["train_s"]), _s(ph["s_per_step"], ".2f")]
            for name, ph in u["phases"].items()]
    return harness.table(["DMU phase", "steps", "s in training loop", "s/step"], rows, [False, True, True, True])


def descendants_table(t: dict[str, Any]) -> list[str]:
    rows = []
    for d in t["descendants"]:
        for tower, v in d["towers"].items():
            heads = f"{v['heads']} head{'s' if v['heads'] > 1 else ''}"
            rows.append([f"`{d['shape']}`", tower, f"{v['depth']} × {v['width']} ({heads}, MLP {v['mlp']})",
                         millions(v["params"]), f"{millions(v['ancestry_same_depth'])} ({v['depth']} × "
                                                f"{v['ancestry_width']})", f"{v['ratio']:.2f}",
                         millions(v["ancestry_full"]), f"{v['ratio_full']:.2f}"])
        if d["kind"] == "clip":
            rows.append([f"`{d['shape']}`", "whole model", "", millions(d["total"]),
                         millions(d["ancestry_same_depth_total"]), f"{d['ratio']:.2f}",
                         millions(t["ancestry"]["total"]), f"{d['total'] / t['ancestry']['total']:.2f}"])
    return harness.table(["descendant", "tower", "depth × width", "params", "ancestry at the same depth",
                          "ratio", "ancestry (full)", "ratio to full"], rows,
                         [False, False, False, True, True, True, True, True])


def stored_table(t: dict[str, Any]) -> list[str]:
    a, m = t["ancestry"], t["moe"]
    rows = [["ancestry (dense CLIP)", millions(a["vision"]), millions(a["text"]), millions(a["total"]),
             millions(a["total"]), "1.00"],
            [f"CLIP-MoE, {m['experts']} experts, top-{m['top_k']}", millions(m["stored"]["vision"]),
             millions(m["stored"]["text"]), millions(m["stored"]["total"]), millions(m["active"]["total"]),
             f"{m['stored']['total'] / a['total']:.2f}"]]
    for name, lg in t["learngenes"].items():
        rows.append([f"learngene ({name})", "", "", millions(lg["total"]), "", f"{lg['total'] / a['total']:.2f}"])
    return harness.table(["model", "vision stored", "text stored", "stored", "active per token",
                          "stored / ancestry"], rows, [False] + [True] * 5)


def moe_towers(t: dict[str, Any]) -> str:
    m = t["moe"]
    return (f"CLIP-MoE active per token by tower: vision {millions(m['active']['vision'])} of "
            f"{millions(m['stored']['vision'])}, text {millions(m['active']['text'])} of "
            f"{millions(m['stored']['text'])} (a token runs {m['top_k']} of {m['experts']} experts in every block).")


def learngene_parts(t: dict[str, Any]) -> list[str]:
    keys = sorted({k for lg in t["learngenes"].values() for k in lg if k != "total"})
    rows = [[name, *(millions(lg.get(k)) for k in keys), millions(lg["total"])] for name, lg in t["learngenes"].items()]
    return harness.table(["learngene", *keys, "total"], rows, [False] + [True] * (len(keys) + 1))


def checks_table(c: dict[str, Any]) -> list[str]:
    rows = []
    for m in c["models"]:
        diff = m["max_abs_diff"]
        rows.append([m["label"], m["kind"], f"`{m['plain_class']}`", _s(diff.get("image"), ".1e") or "—",
                     _s(diff.get("text"), ".1e") or "—", millions(m["plain_params"]),
                     m.get("image_processor") or "—", m.get("tokenizer") or "—", "yes" if m["pass"] else "**no**"])
    return harness.table(["model", "kind", "plain transformers class", "image max abs diff", "text max abs diff",
                          "params", "image processor", "tokenizer", "pass"], rows,
                         [False, False, False, True, True, True, False, False, False])


def code_line(r: dict[str, Any]) -> str:
    """Which code made the units, and the one setting left to the machine (`--amp auto`)."""
    units = [u.get("code") or {} for u in (*r["units"].values(), r["checks"])]
    commits = sorted({u["commit"] for u in units if u.get("commit")})
    changed = any(u.get("src_changed") for u in units)
    return (f"Every command at its defaults beyond the flags below; `--amp auto` resolves to {r['amp_auto']} on "
            f"this CPU. Code: commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or 'unknown'}"
            + (" (src/ with uncommitted changes)" if changed else "") + ".")


def markdown(r: dict[str, Any]) -> str:
    p, c, params = r["plan"], r["checks"], r["parameters"]
    m, inputs = r["machine"], r["units"]["inputs"]
    hub = inputs["hub"]["params"]
    lines = [f"`{r['command']}`", "",
             f"Measured {r['date']}. {harness.machine_line(m)} Each command ran in its own process "
             f"(`python -m clipforge ...`, `--workers {r['workers']}`); peak RSS is the process's `ru_maxrss`, disk "
             f"is what its output directory holds (allocated blocks, as `du`), the peak sampled every "
             f"{r['disk_every_s']} s while it ran. Total {r['wall_time_s'] / 60:.1f} min"
             + (f"; units from earlier records: {', '.join(r['units_reused'])}" if r["units_reused"] else "") + ".", "",
             code_line(r), "",
             "## Inputs", "",
             f"{p['arch']}: {millions(hub['total'])} parameters (vision {millions(hub['vision'])}, text "
             f"{millions(hub['text'])}), random "
             f"weights (seed {p['seed']}), written as the hub publishes `{inputs['hub']['name']}` "
             f"({size(inputs['hub_disk_bytes'])}: {', '.join(inputs['hub']['files'])}). Data: {p['pairs']} PNG images "
             f"({p['image_px']} px) and `train.csv` (image, caption), {size(inputs['data_disk_bytes'])}.", "",
             f"Budgets: DMU {p['experts']} experts (top-{p['top_k']}), {p['experts'] - 1} MCL stages of "
             f"{p['stage_steps']} steps, routers {p['router_steps']} steps, batch {p['batch']}, no evaluation; "
             + (f"routers again at batch {r['units']['route']['batch']} without / with activation checkpointing; "
                if "route" in r["units"] else "") +
             f"extraction {p['extract_steps']} steps of {p['batch']}, no evaluation; descendants "
             f"{', '.join(f'`{s}`' for s in p['shapes'])} from each learngene, no pre-training.", "",
             "## Runs", ""]
    lines += runs_table(r)
    lines += ["", "s/step: seconds in the training loop (its log.jsonl) over its steps; DMU: its four training phases "
                  "together. The rest of a command's wall time is start-up (imports, loading the ancestry), the "
                  "per-stage embedding and clustering, fitting the learngene to the ancestry, and writing models.", ""]
    lines += dmu_table(r["units"]["dmu"])
    d = r["units"]["dmu"]
    lines += ["", "DMU wall time by phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in d["phase_wall_s"].items())
              + "; disk: " + ", ".join(f"{k}/ {size(v)}" for k, v in d["parts_disk_bytes"].items()) + ".", ""]
    if d.get("disk_need_said"):
        lines += [f"What `moe dmu` said before it started: `{d['disk_need_said']}`.", ""]
    if "route" in r["units"] and "route-gc" in r["units"]:
        a, b = r["units"]["route"], r["units"]["route-gc"]
        lines += [f"`moe route` on the CLIP-MoE at batch {a['batch']} ({p['router_steps']} steps): peak RSS "
                  f"{size(a['peak_rss_bytes'])} without, {size(b['peak_rss_bytes'])} with `--grad-checkpointing` "
                  f"({b['peak_rss_bytes'] / a['peak_rss_bytes']:.2f}×); "
                  f"{_s(a.get('s_per_step'), '.2f')} vs {_s(b.get('s_per_step'), '.2f')} s/step.", ""]
    for cons in ("select", "project"):
        e, ds = r["units"][f"extract-{cons}"], r["units"][f"descend-{cons}"]
        lines.append(f"* {cons}: learngene {millions(e['learngene_parameters'])} parameters, "
                     f"{size(e['learngene_disk_bytes'])} on disk; descendants "
                     + ", ".join(f"{Path(x['dir']).name} {size(x['disk_bytes'])}" for x in ds["descendants"]) + ".")
    lines += ["", "## Parameters", ""]
    for key in ("measured", "reference"):
        t = params[key]
        how = "the outputs above" if key == "measured" else "never built with weights"
        lines += [f"### {t['arch']} ({how})", ""]
        if key == "reference":
            lines += [f"Descendant shapes at the same relative depth and width as the measured ones (widths rounded "
                      f"to whole 64-channel heads): {', '.join(f'`{s}`' for s in t['shapes'])}.", ""]
        lines += descendants_table(t) + [""] + stored_table(t) + ["", moe_towers(t), ""] + learngene_parts(t) + [""]
    agree = params["counts_match_outputs"]
    bad = [k for k, v in agree.items() if not v]
    lines += [("Every count of the measured architecture equals the parameters of the output it describes "
               f"({len(agree)} outputs: the hub model, the CLIP-MoE, both learngenes, every descendant)."
               if not bad else f"**Counts that differ from the outputs: {', '.join(bad)}.**"), ""]
    lines += ["## Embeddings: plain transformers against clipforge", "",
              f"Each output loaded by `from_pretrained` in a process that never imports clipforge (transformers "
              f"{c['transformers']}; clipforge imported there: {c['clipforge_imported_in_plain_process']}), the "
              f"CLIP-MoE by `AutoModel.from_pretrained(dir, trust_remote_code=True)`; the same directory loaded by "
              f"`clipforge.models.io.load`; projected embeddings of {p['check_inputs']} seeded images and the CSV's "
              f"first {p['check_inputs']} captions compared. Pass: max abs diff ≤ {c['tolerance']:g} and the same "
              f"parameter count.", ""]
    lines += checks_table(c)
    lines += ["", f"Largest difference: {c['max_abs_diff']:.1e}; all pass: {'yes' if c['all_pass'] else '**no**'}."]
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any], out: Path) -> None:
    """results.md in `out`."""
    harness.write_markdown(out, markdown(results))


def main(argv: list[str] | None = None) -> int:
    """Rebuild results.md from a results directory's results.json."""
    return harness.report_main("realshape", render, argv)


if __name__ == "__main__":
    sys.exit(main())
