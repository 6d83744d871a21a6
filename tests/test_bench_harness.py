"""benchmarks.harness: the flags' defaults (a smoke test never writes the committed results), the ancestry,
unit records, the machine description and the one Markdown table renderer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import harness
from clipforge.models.io import save
from clipforge.models.registry import build


def _args(name: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    harness.add_common(p, name)
    return p.parse_args(argv)


def test_quick_defaults_stay_out_of_the_committed_results():
    full, quick = _args("clipmoe", []), _args("clipmoe", ["--quick"])
    assert harness.out_dir(full, "clipmoe") == harness.BENCHMARKS / "clipmoe" / "results"
    assert harness.work_dir(full, "clipmoe") == Path("runs/bench-clipmoe")
    assert harness.out_dir(quick, "clipmoe") == Path("runs/bench-clipmoe-quick/results")
    given = _args("clipmoe", ["--quick", "--out", "o", "--work", "w", "--force"])
    assert (harness.out_dir(given, "clipmoe"), harness.work_dir(given, "clipmoe")) == (Path("o"), Path("w"))
    assert given.overwrite
    p = argparse.ArgumentParser()
    harness.add_common(p, "perf", work=False, ancestry=False)
    with pytest.raises(SystemExit):  # no flag that would mean nothing
        p.parse_args(["--work", "w"])


def test_command_is_the_module_invocation():
    assert harness.command("perf", ["--quick", "--out", "a b"]) == "python -m benchmarks.perf.run --quick --out 'a b'"


def test_resolve_ancestry_takes_a_model_or_run_directory_else_trains(tmp_path, monkeypatch):
    save(build("tiny", seed=0), tmp_path / "run" / "model", provenance={"source": "test"})
    assert harness.resolve_ancestry(tmp_path / "run", quick=True) == tmp_path / "run" / "model"
    assert harness.resolve_ancestry(tmp_path / "run" / "model", quick=True) == tmp_path / "run" / "model"
    calls = []
    monkeypatch.setattr("clipforge.demo.ancestry.ensure_ancestry", lambda out, quick: calls.append((out, quick)) or out)
    assert harness.resolve_ancestry(tmp_path / "new", quick=True) == tmp_path / "new"
    assert calls == [(tmp_path / "new", True)]
    rec = harness.ancestry_record(tmp_path / "run" / "model")
    assert rec["recipe"] is None and len(rec["weights_sha256"]) == 16


def test_units_reuse_only_records_of_the_same_identity(tmp_path):
    units = harness.Units(tmp_path, {"budget": {"steps": (1, 2)}})
    assert units.get("a") is None and not units.has("a")
    units.put("a", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"identity": {"budget": {"steps": [1, 2]}}, "name": "a",
                                                            "unit": {"x": 1}}
    again = harness.Units(tmp_path, {"budget": {"steps": [1, 2]}})
    assert again.has("a") and again.reused == {"a"} and again.get("a") == {"x": 1}
    assert harness.Units(tmp_path, {"budget": {"steps": [1, 3]}}).get("a") is None
    # an older layout of the same identity, mapped by `canonical`; an older record layout, read by `legacy`
    (tmp_path / "b.json").write_text(json.dumps({"identity": {"old": 1}, "units": {"y": 2}}))
    read = harness.Units(tmp_path, {"new": 1}, canonical=lambda d: {"new": d.get("old")},
                         legacy=lambda rec: {"units": rec["units"]})
    assert read.get("b") == {"units": {"y": 2}}


def test_records_of_another_ancestry_are_refused_not_replaced(tmp_path):
    """Committed records of another ancestry (the same recipe trains other bits on another CPU) are not this
    run's to replace: one line naming what differs; --overwrite moves them aside, never deletes them."""
    from clipforge.errors import ClipforgeError

    root = tmp_path / "units"
    theirs = harness.Units(root, {"budget": {"steps": 2}, "ancestry_weights": "fdc27837"})
    theirs.put("a", {"x": 1})
    ours = harness.Units(root, {"budget": {"steps": 2}, "ancestry_weights": "e5ef29b1"})
    assert ours.foreign() == (["a"], ["ancestry_weights fdc27837 there, e5ef29b1 here"])
    with pytest.raises(ClipforgeError, match=r"1 unit record\(s\) of another run \(ancestry_weights fdc27837 "):
        ours.refuse_foreign(False)
    assert (root / "a.json").is_file()
    theirs.refuse_foreign(False)  # its own records: nothing to say
    ours.refuse_foreign(True)
    assert not (root / "a.json").exists() and ours.foreign() == ([], [])
    aside = tmp_path / "units.replaced-1" / "a.json"
    assert json.loads(aside.read_text())["unit"] == {"x": 1}


def test_table_is_one_renderer():
    assert harness.table(["a", "b"], [["x", 1], ["", "y"]], numeric=[False, True]) == [
        "| a | b |", "|---|---:|", "| x | 1 |", "| | y |"]


def test_machine_says_what_it_knows_and_what_the_user_said():
    m = harness.machine("a test suite beside")
    assert {"cpu", "cpu_capability", "cores", "threads", "torch", "gpu", "load_average"} <= set(m) and m["cpu"]
    assert "What else ran: a test suite beside." in harness.machine_line(m)
    assert "not recorded" in harness.machine_line(harness.machine())
