"""`python -m benchmarks.learngene.run --quick` end to end (the quick demo ancestry, trained where --ancestry
points), its unit records reused by a rerun, and its report rebuilt from the committed record."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "learngene" / "results"


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.learngene.run")


@pytest.mark.slow
def test_benchmark_quick(tmp_path, capsys):
    # No ancestry there: the benchmark trains the quick demo ancestry into it (seconds; an untrained stand-in
    # makes the linear probes and plateau rules slower than the training saves).
    argv = ["--quick", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "work"),
            "--ancestry", str(tmp_path / "ancestry")]
    assert _bench().main(argv) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert {"command", "budget", "C_flops", "points", "ptft", "runs", "extractions", "recipe", "costs", "storage",
            "summary", "verdicts", "wall_time_s", "machine"} <= set(results)
    assert results["command"].startswith("python -m benchmarks.learngene.run --quick")
    methods = {"mmlg", "tleg_per_tower", "shared_only", "scratch", "feature_kd", "tinyclip", "weight_selection",
               "heur_lg", "auto_lg"}
    assert set(results["runs"]["C/ratio"]) == methods and set(results["runs"]["C"]) == {"mmlg"}
    # Compute matching: every family at F = C / ratio spends at most F (one step of slack per depth).
    C, F = results["C_flops"], results["points"]["C/ratio"]
    assert sum(u["flops"] for u in results["ptft"].values()) == C and pytest.approx(C / 2.8) == F
    for m, cost in results["costs"]["C/ratio"].items():
        assert cost["family_flops"] <= F * 1.0001, m
    assert results["costs"]["C/ratio"]["mmlg"]["extraction_flops"] > 0
    # The Aux-Net measured beside the ancestry; the recipe is the best one by its own numbers.
    ext = results["extractions"]
    assert results["recipe"] == max(results["budget"]["recipes"], key=lambda r: ext[f"mmlg/{r}"]["selection_score"])
    q = ext[f"mmlg/{results['recipe']}"]["auxnet_quality"]
    assert {"step0", "final", "ancestry", "curve"} <= set(q)
    unit = results["runs"]["C/ratio"]["mmlg"]["1"]
    assert {"clip", "fashion_mnist", "mnist", "text"} <= set(unit["downstream"]["0"])
    # Verdict lines: computed, each holds or does not hold with its figures.
    lines = [v["line"] for v in results["verdicts"]]
    assert lines and all((": holds (" in x or ": does not hold (" in x) and ("points" in x or "%" in x) for x in lines)
    md = (tmp_path / "results" / "results.md").read_text()
    assert "--quick" in md and "| MM-LG |" in md and "## Verdicts" in md and "Machine: " in md
    for png in ("curves", "retrieval"):
        assert (tmp_path / "results" / f"{png}.png").stat().st_size > 0
    units = sorted(p.name for p in (tmp_path / "results" / "units").iterdir())
    capsys.readouterr()
    assert _bench().main(argv) == 0  # a rerun reuses every finished unit, from its committed record
    out = capsys.readouterr().out
    assert out.count("(from its record)") == len(units)
    assert not [p for p in (tmp_path / "results").rglob(".*")]  # no temp files left


def test_report_rebuilds_the_committed_results_md(tmp_path):
    """`python -m benchmarks.learngene.report` writes the committed results.md again from its results.json."""
    from benchmarks.learngene import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_step0_table_rebuilds_the_committed_step0_md():
    from benchmarks.learngene import step0

    for folder in ("step0", "step0-stages2", "step0-stages4"):
        rec = json.loads((RESULTS / folder / "step0.json").read_text())
        assert step0.markdown(rec, rec["data"]) == (RESULTS / folder / "step0.md").read_text(), folder


@pytest.mark.slow
def test_constructions_quick(tmp_path):
    """`benchmarks.learngene.constructions --quick`: both constructions extracted and measured, a default chosen."""
    from benchmarks.learngene import constructions

    out = tmp_path / "out"
    assert constructions.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out),
                               "--ancestry", str(tmp_path / "ancestry")]) == 0
    rec = json.loads((out / "constructions" / "constructions.json").read_text())
    assert [r["construction"] for r in rec["rows"]] == ["select", "project"] and rec["chosen"] in ("select", "project")
    for r in rec["rows"]:
        assert {"step0", "final", "ancestry"} <= set(r["auxnet"]) and len(r["descendants_after"]) == 2
    assert constructions.markdown(rec) == (out / "constructions" / "constructions.md").read_text()


def test_constructions_md_rebuilds_from_its_json():
    from benchmarks.learngene import constructions

    path = RESULTS / "constructions" / "constructions.json"
    if path.is_file():  # committed once the benchmark has run
        rec = json.loads(path.read_text())
        assert constructions.markdown(rec) == (RESULTS / "constructions" / "constructions.md").read_text()
