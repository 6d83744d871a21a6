"""What every benchmark shares: its flags, the ancestry, unit records, the machine and the Markdown tables.

A benchmark is a subpackage `benchmarks/<name>/` run from the repository root as
`python -m benchmarks.<name>.run`: `run.py` (`main(argv) -> int`) measures, `report.py` turns the result
records in `results/` into `results.md` (and plots), `README.md` says what is measured and how.

* `add_common` gives every benchmark the same flags (`--quick --out --work --ancestry --threads
  --overwrite --note`; a benchmark without a work directory or an ancestry leaves those out) and
  `out_dir` / `work_dir` their defaults: the committed `benchmarks/<name>/results/` and `runs/bench-<name>/`,
  and with `--quick` both under `runs/bench-<name>-quick/`, so a smoke test never writes into the
  committed results.
* `resolve_ancestry` finds the ancestry model (a model or run directory) or trains the demo's;
  `ancestry_record` says which one it is (recipe and the weights' digest).
* `Units`: one small JSON record per finished unit of work, reused by a rerun whose identity matches,
  so a rerun (on this machine or another) does only what is missing.
* `machine` describes where the numbers were measured; what else ran there is the user's to say (`--note`).
* `table` is the one Markdown table renderer; `write_results` writes results.json and has the report render
  results.md (and plots) from it, as `python -m benchmarks.<name>.report` does from a committed record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipforge.files import write_json, write_text
from clipforge.markdown import table as markdown_table
from clipforge.run import Run, normalise

BENCHMARKS = Path(__file__).resolve().parent


def results_dir(name: str) -> Path:
    """The committed results of benchmark `name`."""
    return BENCHMARKS / name / "results"


def work_dir(args: argparse.Namespace, name: str) -> Path:
    """`--work`, else `runs/bench-<name>` (`-quick` with `--quick`), relative to the repository root."""
    return getattr(args, "work", None) or Path(f"runs/bench-{name}{'-quick' if args.quick else ''}")


def out_dir(args: argparse.Namespace, name: str) -> Path:
    """`--out`, else the committed results folder; with `--quick`, `results/` under the quick work directory."""
    if args.out is not None:
        return args.out
    return work_dir(args, name) / "results" if args.quick else results_dir(name)


def add_common(p: argparse.ArgumentParser, name: str, *, work: bool = True, ancestry: bool = True,
               overwrite: bool | None = None, threads: str | None = "torch's") -> None:
    """The flags every benchmark takes; `work` / `ancestry` / `overwrite` (default: `work`) False, `threads` None,
    for one that has no such input (`threads` names the default thread count)."""
    p.add_argument("--quick", action="store_true", help="smoke test: toy sizes (the tests run it)")
    p.add_argument("--out", type=Path, help=f"results directory (default benchmarks/{name}/results; with --quick "
                                            f"runs/bench-{name}-quick/results)")
    if work:
        p.add_argument("--work", type=Path, help=f"models, runs and data (default runs/bench-{name}[-quick])")
    if ancestry:
        p.add_argument("--ancestry", type=Path, help="ancestry model or `clipforge ancestry` run directory (default: "
                                                     "the cached demo ancestry, its quick variant with --quick; "
                                                     "trained if missing)")
    if threads is not None:
        p.add_argument("--threads", type=int, help=f"torch CPU threads (default: {threads})")
    if work if overwrite is None else overwrite:
        p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                       help="discard a work directory made with other settings (alias --force)")
    p.add_argument("--note", help="what else ran on the machine meanwhile (recorded with the machine description)")


def parser(name: str, doc: str, module: str = "run") -> argparse.ArgumentParser:
    """An argument parser whose usage line names the command as it is run (`python -m benchmarks.<name>.run`);
    its description is the module docstring's first paragraph."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{name}.{module}", description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def command(name: str, argv: Sequence[str], module: str = "run") -> str:
    """The command line that made a result, as results.md quotes it."""
    return shlex.join(["python", "-m", f"benchmarks.{name}.{module}", *argv])


def all_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None, default_all: bool = False) -> int:
    """Set torch's CPU threads (`threads`, else every core with `default_all`, else torch's own); return them."""
    import torch

    if threads or default_all:
        torch.set_num_threads(threads or all_cores())
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(note: str | None = None) -> dict[str, Any]:
    """Where the numbers were measured: CPU (and the kernels torch picks on it), cores, torch threads and
    versions, the GPU, the load average at this moment, and `note` (what else ran meanwhile, which only the
    user knows)."""
    import torch

    cuda = torch.cuda.is_available()
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "usable_cores": all_cores(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "note": note}


# ------------------------------------------------------------------------------------------ ancestry


def resolve_ancestry(path: Path | None, quick: bool) -> Path:
    """The ancestry's model directory: `path` (a model directory or a run directory holding `model/`) when it
    holds a model, else the demo ancestry found or trained at `path` (default: the cache; `quick`: its quick
    variant)."""
    from clipforge.demo.ancestry import ensure_ancestry
    from clipforge.models.io import resolve_model_dir

    if path is not None:
        model = resolve_model_dir(path, strict=False)
        if (model / "config.json").is_file():
            return model
    return Path(ensure_ancestry(path, quick=quick))


def ancestry_record(model_dir: Path) -> dict[str, Any]:
    """What identifies an ancestry: its recipe, its name and its weights' digest (one recipe trains different
    weights where the kernels differ: fp32 or bf16, SDPA or eager attention)."""
    from clipforge.files import file_digest
    from clipforge.models.io import WEIGHTS, read_provenance

    prov = read_provenance(model_dir)
    return {"recipe": prov.get("recipe"), "name": prov.get("name"),
            "weights_sha256": file_digest(Path(model_dir) / WEIGHTS)}


def canonical_recipe(recipe: dict | None) -> dict:
    """An ancestry recipe in the current layout (older provenance wrote the schedule's fields flat)."""
    from dataclasses import asdict

    from clipforge.demo.ancestry import AncestryRecipe

    if not recipe:
        return {}
    try:
        return asdict(AncestryRecipe.from_record(recipe))
    except (TypeError, ValueError):
        return dict(recipe)


def claim_work(work: Path, name: str, settings: dict[str, Any], overwrite: bool) -> Run:
    """Hold the work directory for this process: a second process on it, or one with other settings
    (unless `overwrite`), is refused in one line."""
    return Run(work, f"bench {name}", settings, overwrite=overwrite).hold()


# ---------------------------------------------------------------------------------------- unit records


class Units:
    """Unit records: `get(name)` → the record or None, `put(name, record)` writes `<root>/<name>.json`.

    A record holds the benchmark's identity (budget, ancestry...); one whose identity differs is not
    reused. `canonical` maps a stored identity to today's layout of the same identity; `legacy` reads a
    record written in an older layout (a dict without "unit") as today's record."""

    def __init__(self, root: Path, identity: dict[str, Any], canonical: Callable[[dict], dict] | None = None,
                 legacy: Callable[[dict], dict] | None = None) -> None:
        self.root, self.identity = Path(root), normalise(identity)
        self.canonical = canonical or (lambda d: d)
        self.legacy = legacy
        self.reused: set[str] = set()

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        """The record of unit `name` if one exists with this identity."""
        path = self.path(name)
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        try:
            same = normalise(self.canonical(rec.get("identity") or {})) == self.identity
        except Exception:  # a layout this version cannot read: not the same identity
            same = False
        if not same:
            return None
        if "unit" not in rec and self.legacy is not None:
            return self.legacy(rec)
        return rec["unit"]

    def has(self, name: str) -> bool:
        """Whether a matching record exists (counted as reused)."""
        if self.get(name) is None:
            return False
        self.reused.add(name)
        return True

    def put(self, name: str, unit: dict[str, Any]) -> dict[str, Any]:
        write_json(self.path(name), {"identity": self.identity, "name": name, "unit": unit})
        return unit

    def foreign(self) -> tuple[list[str], list[str]]:
        """Records here of another identity, which this run would replace one by one: (their names, what
        differs: the identity's top-level fields, with both values where they are short)."""
        names, fields = [], {}
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                theirs = normalise(self.canonical(json.loads(path.read_text()).get("identity") or {}))
            except Exception:  # not a unit record: not ours to judge
                continue
            if theirs == self.identity:
                continue
            names.append(path.stem)
            for key, a, b in _differences(theirs, self.identity):
                fields[key] = f"{key} {a} there, {b} here" if len(str(a)) + len(str(b)) < 80 else key
        return names, list(fields.values())

    def refuse_foreign(self, overwrite: bool) -> None:
        """Refuse (one line) to run over records of another identity: a rerun would replace committed records,
        e.g. those of an ancestry that another CPU trained to other bits, that another machine could still
        finish. `overwrite` moves them aside to `<root>.replaced-N/` first."""
        from clipforge.errors import ClipforgeError

        names, differs = self.foreign()
        if not names:
            return
        if not overwrite:
            raise ClipforgeError(
                f"{self.root} holds {len(names)} unit record(s) of another run ({'; '.join(differs)}); this run "
                "would replace them. Finish them where they were made (the same ancestry weights: --ancestry), "
                "or pass --overwrite to move them aside and start over")
        n = 1
        while (aside := self.root.with_name(f"{self.root.name}.replaced-{n}")).exists():
            n += 1
        aside.mkdir(parents=True)
        for name in names:
            self.path(name).rename(aside / f"{name}.json")
        print(f"[bench] moved {len(names)} record(s) of another run aside to {aside}", flush=True)


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(field, value in a, value in b) for each field that differs, nested dicts one level down."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict) and not prefix:
            out += _differences(x, y, f"{key}.")
        else:
            out.append((prefix + key, x, y))
    return out


class Progress:
    """One line per unit of work, with the elapsed time and a naive ETA for the phase."""

    def __init__(self, phase: str, total: int, tag: str = "bench") -> None:
        self.phase, self.total, self.tag, self.done, self.t0 = phase, total, tag, 0, time.perf_counter()

    def tick(self, what: str, skipped: bool = False) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        note = "from its record" if skipped else f"{elapsed:.0f} s in phase, ~{eta:.0f} s left"
        print(f"[{self.tag}] {self.phase} {self.done}/{self.total} {what} ({note})", flush=True)


# ------------------------------------------------------------------------------------------- reports


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None) -> list[str]:
    """A Markdown table's lines by clipforge's one renderer (`clipforge.markdown.table`); cells are given as text
    (each benchmark formats its numbers), `numeric` right-aligns those columns."""
    # An empty cell is written "| |", as the committed results.md files have it (the renderer writes "|  |").
    return [re.sub(r"\|  (?=\|)", "| ", line) for line in markdown_table(columns, list(rows), numeric)]


def machine_line(m: dict[str, Any]) -> str:
    """The machine description as a sentence for results.md."""
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} of {m['usable_cores']} cores"
    note = m.get("note")
    return (f"Machine: {where}; torch {m['torch']}; load average at start {m['load_average']}. What else ran: "
            f"{note if note else 'not recorded (pass --note)'}.")


Render = Callable[[dict[str, Any], Path], None]  # a report's render(results, out): results.md (and plots)


def write_results(out: Path, results: dict[str, Any], render: Render) -> None:
    """results.json in `out` (atomically), then what the report renders from it."""
    write_json(out / "results.json", results)
    render(results, out)


def write_markdown(out: Path, text: str) -> Path:
    """results.md in `out`, atomically."""
    return write_text(out / "results.md", text)


def read_results(out: Path) -> dict[str, Any]:
    """The result record in `out` (results.json), for a report rebuilt from it."""
    from clipforge.files import read_json_object

    return read_json_object(out / "results.json", "a benchmark's results")


def report_main(name: str, render: Render, argv: list[str] | None) -> int:
    """`python -m benchmarks.<name>.report [--out DIR]`: rebuild results.md (and plots) from DIR/results.json."""
    p = parser(name, f"Rebuild benchmarks/{name}'s results.md (and plots) from results.json.", "report")
    p.add_argument("--out", type=Path, default=results_dir(name), help=f"results directory (default "
                                                                       f"benchmarks/{name}/results)")
    args = p.parse_args(argv)
    render(read_results(args.out), args.out)
    print(f"[{name}] wrote {args.out / 'results.md'}")
    return 0
