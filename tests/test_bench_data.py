"""`python -m benchmarks.data.run --quick`: the four (path, size) units, each in its own `python -m` process,
the verdicts and the table; a rerun with --redo reuses them; the report rebuilt from the committed record."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "results"


@pytest.mark.slow
def test_quick_run_measures_every_unit_and_a_redo_reuses_them(tmp_path: Path, capsys) -> None:
    bench = importlib.import_module("benchmarks.data.run")
    argv = ["--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--note", "the test suite"]
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["command"].startswith("python -m benchmarks.data.run --quick")
    assert res["settings"] == {"sizes": [100, 200], "batch": 8, "steps": 1, "embed": 16, "workers": [0]}
    assert set(res["units"]) == {"disk/100", "memory/100", "disk/200", "memory/200"}
    for u in res["units"].values():
        assert u["first_step_s"] > 0 and u["train"]["0"]["samples_per_s"] > 0 and u["embed"]["0"]["samples"] == 16
    assert len(res["verdicts"]) == 3 and all(": holds" in v or ": does not hold" in v for v in res["verdicts"][:2])
    assert res["machine"]["note"] == "the test suite" and res["generation"]["images"] == 200
    md = (tmp_path / "out" / "results.md").read_text()
    assert res["command"] in md and "What else ran: the test suite" in md and "| disk | 100 |" in md
    capsys.readouterr()
    assert bench.main(argv + ["--redo"]) == 0  # nothing to redo: every unit from the first run
    assert capsys.readouterr().out.count("reused from") == 4
    assert json.loads((tmp_path / "out" / "results.json").read_text())["generation"]["written_now"] == 200


def test_report_rebuilds_the_committed_results_md(tmp_path: Path) -> None:
    """`python -m benchmarks.data.report` writes the committed results.md again from its results.json."""
    from benchmarks.data import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
    rec = json.loads((RESULTS / "results.json").read_text())
    assert report.verdicts(rec["units"], *rec["settings"]["sizes"]) == (rec["verdicts"], rec["summary"])
