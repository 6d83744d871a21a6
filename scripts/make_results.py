"""Write docs/results.md and README.md's "measured" block from the committed result files, nothing else.

Every figure in either comes from a file a command wrote (docs/ancestry/metrics.json, docs/demo/,
benchmarks/<name>/results/results.json), and each section names that command. Nothing is copied by hand:
rerun this after a result changes. `--check` exits 1 (writing nothing) when a file is not what the results
say, which is what the test suite runs.

    python scripts/make_results.py [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- measured:begin (scripts/make_results.py) -->", "<!-- measured:end -->"
# (benchmark, title, what it asks) in the order the results document tells them
BENCHMARKS = [
    ("clipmoe", "CLIP-MoE (grow)", "CLIP-MoE against its base, direct fine-tuning, sparse upcycling and w/o MCL, "
                                   "paper regime, 3 seeds"),
    ("learngene", "MM-LG (shrink / reshape)", "MM-LG against PT-FT, Scratch, weight selection, TinyCLIP-style, "
                                              "TLEG-per-tower, Auto-LG and feature KD at equal family compute, "
                                              "descendants at two thirds of the ancestry's widths, 3 seeds"),
    ("data", "Data at scale", "time to first step, memory and throughput from 10,000 to 100,000 disk-backed pairs"),
    ("perf", "Training and evaluation speed", "the training step's switches against plain transformers"),
    ("moe_layer", "The MoE layer", "the sparse MoE dispatch against dense FFNs"),
]


# Where a benchmark keeps its earlier protocol's results, shown as the control until the new protocol's run
# commits results/results.json (issue 33 re-protocoled both methods' benchmarks).
CONTROLS = {"clipmoe": "v1", "learngene": "same-width"}


def result_file(name: str) -> tuple[Path, str | None]:
    """A benchmark's results.json and, when it is the earlier protocol's control, which one."""
    path = ROOT / "benchmarks" / name / "results" / "results.json"
    if path.is_file() or name not in CONTROLS:
        return path, None
    return path.parent / CONTROLS[name] / "results.json", CONTROLS[name]


def _partial(r: dict[str, Any]) -> str:
    """"partial: 120 of 137 units, ..." for a report written before its run finished (`--partial`), else ""."""
    part = r.get("partial")
    if not part:
        return ""
    return (f"partial: {part['units'] - len(part['missing'])} of {part['units']} units; each claim over the "
            "members both methods have, the rest to come")


def _control_note(name: str, control: str | None) -> list[str]:
    if control is None:
        return []
    new = ROOT / "benchmarks" / name / "README.md"
    return [f"*The earlier protocol's results ({control}), kept as a control: the new protocol ({_link(new)}) "
            "has not committed its run yet.*", ""]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _link(path: Path) -> str:
    """A Markdown link to `path` from docs/results.md."""
    return f"[{_rel(path)}]({os.path.relpath(path, RESULTS.parent)})"


def _verdicts(results: dict[str, Any]) -> list[str]:
    """A benchmark's verdict lines, as it wrote them (records with a `line`, or plain strings)."""
    return [v["line"] if isinstance(v, dict) else str(v) for v in results.get("verdicts", [])]


def demo_verdicts() -> list[str]:
    """The bullet lines of the demo report's "What this run shows" section (its own verdicts)."""
    text = (ROOT / "docs" / "demo" / "report.md").read_text(encoding="utf-8")
    return [line[2:] for line in text.splitlines()
            if line.startswith("- ") and ("**holds**" in line or "**does not hold**" in line)]


def _ancestry_section() -> list[str]:
    from clipforge.demo.ancestry import summary

    path = ROOT / "docs" / "ancestry" / "metrics.json"
    m = _json(path)
    minutes = m["wall_time_s"]["total"] / 60
    return ["## The demo ancestry", "", f"Made by `{m['command']}`; numbers from {_link(path)} "
            f"(plot: {_link(path.with_name('loss.png'))}). Wall time {minutes:.1f} min.", "",
            summary(m), ""]


def _demo_section() -> list[str]:
    from clipforge.markdown import table

    path = ROOT / "docs" / "demo" / "demo.json"
    d = _json(path)
    phases = d["phases_s"]
    rows = ([[name, f"{s / 60:.1f}"] for name, s in phases.items()]
            + [["all phases", f"{sum(phases.values()) / 60:.1f}"]])
    cached = "cached" if d.get("ancestry_was_cached") else "trained in this run"
    return ["## The demo", "", f"Made by `clipforge demo` (report: {_link(path.with_name('report.md'))}, "
            f"{_link(path.with_name('report.html'))}); phase times from {_link(path)}, the ancestry "
            f"{cached}. Its verdicts:", "", *[f"- {v}" for v in demo_verdicts()], "",
            *table(["phase", "minutes"], rows, [False, True]), ""]


def _full_verdict(v: dict[str, Any] | str) -> list[str]:
    """A verdict's bullet as the benchmark wrote it, a multi-task claim with one sub-bullet per task."""
    if isinstance(v, str) or "line" not in v:
        return [f"- {v}"]
    return [f"- {v['line']}"] + [f"  - {t['line']}" for t in v.get("tasks", [])]


def _benchmark_section(name: str, title: str, what: str) -> list[str]:
    path, control = result_file(name)
    r = _json(path)
    md = path.with_suffix(".md")
    lines = [f"## {title}", "", *_control_note(name, control),
             *([f"*{_partial(r).capitalize()}: see the list at the top of {_link(md)}.*", ""]
               if _partial(r) else []),
             f"{what}. Made by `{r.get('command', '(not recorded)')}`; the full tables: {_link(md)}.", ""]
    verdicts = _verdicts(r)
    lines += [x for v in r.get("verdicts", []) for x in _full_verdict(v)] if verdicts else [
        "(a measurement without claims: see the tables)"]
    return lines + [""]


def render_results() -> str:
    lines = ["# Results", "", "Generated by `python scripts/make_results.py` from the committed result files; every "
             "section names the command that made its numbers. Do not edit by hand.", ""]
    lines += _ancestry_section() + _demo_section()
    for name, title, what in BENCHMARKS:
        lines += _benchmark_section(name, title, what)
    return "\n".join(lines).rstrip() + "\n"


# README shows these claim groups of a benchmark in full and counts the rest (docs/results.md has every line)
README_GROUPS = {"clipmoe": ("CLIP-MoE", "compute-matched", "base logit scale")}
TASK_SHORT = {"clip": "R@1", "fashion_mnist": "FMNIST", "mnist": "MNIST", "text": "count"}


def short_verdict(v: dict[str, Any] | str) -> str:
    """One README line: the claim, holds / does not hold, and the figures (per task for a multi-task claim)."""
    if isinstance(v, str) or "line" not in v:
        return str(v)
    tasks = v.get("tasks")
    if not tasks:
        return v["line"]
    k = sum(t["holds"] for t in tasks)
    figs = ", ".join(f"{TASK_SHORT.get(t['task'], t['task'])} {100 * t['diff']:+.1f} ± {100 * t['se']:.1f}"
                     for t in tasks)
    verdict = "holds" if k == len(tasks) else "does not hold"
    return (f"{v['claim']}: {verdict} on {k} of {len(tasks)} tasks "
            f"({figs} pts; {tasks[0]['n']} paired runs of depth × seed)")


def _readme_lines(name: str, results: dict[str, Any]) -> list[str]:
    """A benchmark's verdicts for README: the groups README_GROUPS names in full, the others counted."""
    verdicts = results.get("verdicts", [])
    groups = README_GROUPS.get(name)
    if groups is None:
        return [f"- {short_verdict(v)}" for v in verdicts]
    shown = [v for v in verdicts if isinstance(v, dict) and v.get("group") in groups]
    rest = [v for v in verdicts if v not in shown]
    names = list(dict.fromkeys(v.get("group", "other") for v in rest if isinstance(v, dict)))
    held = sum(bool(isinstance(v, dict) and v.get("holds")) for v in rest)
    return [f"- {short_verdict(v)}" for v in shown] + (
        [f"- and {len(rest)} more ({', '.join(names)}): {held} hold; every line in docs/results.md"] if rest else [])


def render_readme_block() -> str:
    """README's short "measured" block: each method's verdict lines and where the rest is."""
    lines = [BEGIN, ""]
    for name, title, _ in BENCHMARKS[:2]:
        path, control = result_file(name)
        r = _json(path)
        label = (f" — the earlier protocol ({control}), a control until the new one's run lands" if control
                 else f" — {_partial(r)}" if _partial(r) else "")
        lines += [f"**{title}**{label} (`{r.get('command')}`):", "", *_readme_lines(name, r), ""]
    lines += ["**The demo** (`clipforge demo`, report in [docs/demo/report.md](docs/demo/report.md)):", "",
              *[f"- {v}" for v in demo_verdicts()], "", "Every number, the data and speed benchmarks and how each "
              "was made: [docs/results.md](docs/results.md).", "", END]
    return "\n".join(lines)


def readme_with_block(readme: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"{README}: no `{BEGIN}` ... `{END}` block to fill")
    return pattern.sub(lambda _: render_readme_block(), readme)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="exit 1 if a file differs; write nothing")
    check = args.parse_args(argv).check
    want = {RESULTS: render_results(), README: readme_with_block(README.read_text(encoding="utf-8"))}
    stale = [p for p, text in want.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if check:
        for p in stale:
            print(f"{_rel(p)} is not what the result files say: run python scripts/make_results.py", file=sys.stderr)
        return 1 if stale else 0
    from clipforge.files import write_text

    for p in stale:
        write_text(p, want[p])
        print(f"wrote {_rel(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
