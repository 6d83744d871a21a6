"""`python -m benchmarks.learngene.run --quick` end to end (the width-gap protocol at toy sizes on the quick demo
ancestry, trained where --ancestry points), its unit records reused by a rerun, and the committed reports (the
same-width control's included) rebuilt from their records."""

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
    # One thread: the toy models' steps are overhead-bound, and a second thread only contends on a shared machine.
    argv = ["--quick", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "work"),
            "--ancestry", str(tmp_path / "ancestry"), "--threads", "1"]
    assert _bench().main(argv) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert {"command", "budget", "C_flops", "points", "ptft", "runs", "extractions", "costs", "storage", "members",
            "family_shape", "text_task", "teacher_cache", "summary", "verdicts", "wall_time_s",
            "machine"} <= set(results)
    assert results["command"].startswith("python -m benchmarks.learngene.run --quick")
    members = ["clip-d1", "clip-d2", "vision-d1", "vision-d2", "text-d1", "text-d2"]
    assert results["members"] == members and set(results["ptft"]) == set(members)
    methods = {"mmlg", "tleg_per_tower", "weight_selection", "tinyclip", "auto_lg", "scratch", "feature_kd"}
    assert set(results["runs"]["C/ratio"]) == methods and set(results["runs"]["C"]) == {"mmlg", "scratch"}
    # The family is narrower than the ancestry (the tiny ancestry's one-head towers keep their one head).
    assert results["family_shape"]["vision"]["width"] <= results["ancestry"]["shape"]["vision"][1]
    # Compute matching: C is PT-FT's family; each family at a point spends at most its F, past the extraction,
    # plus the one step every member gets at least.
    C = results["C_flops"]
    assert sum(u["flops"] for u in results["ptft"].values()) == C
    assert results["points"] == {"C/ratio": pytest.approx(C / 2.8), "C": C}
    for p, per_method in results["runs"].items():
        for m, per_member in per_method.items():
            ext = results["extractions"][m]["flops"] if m in results["learngene_methods"] else 0.0
            slack = sum(u["flops"] / u["steps"] for u in per_member.values())
            assert sum(u["flops"] for u in per_member.values()) <= max(results["points"][p] - ext, 0) + slack, (p, m)
            assert results["costs"][p][m]["family_flops"] == pytest.approx(
                sum(u["flops"] for u in per_member.values()) + ext)
            assert {u["member"] for u in per_member.values()} == set(members)
    # One extraction per learngene method, at the family's widths, measured beside the ancestry.
    for e in results["extractions"].values():
        assert e["widths"] == {t: results["family_shape"][t]["width"] for t in ("vision", "text")}
        assert {"step0", "final", "ancestry", "curve"} <= set(e["auxnet_quality"]) and set(e["descendants_step0"]) \
            == set(members)
    # Each kind its own task; every run read the ancestry's embeddings from the cache.
    unit = results["runs"]["C/ratio"]["mmlg"]
    assert {"clip"} <= set(unit["clip-d1"]["downstream"]["0"]) and {"fashion_mnist", "mnist"} <= set(
        unit["vision-d2"]["downstream"]["0"]) and {"text"} <= set(unit["text-d1"]["downstream"]["0"])
    assert results["teacher_cache"]["hits"] > 0 and results["teacher_cache"]["misses"] == 0
    assert {"drawn", "untrained"} <= set(results["text_task"])
    # Storage: block parameters apart from the token tables.
    assert {"blocks", "token_table", "other", "total"} <= set(results["storage"]["mmlg"])
    # Verdict lines: computed by the one rule, each holds or does not hold with its figures.
    lines = [v["line"] for v in results["verdicts"]]
    assert lines and all(": holds" in x or ": does not hold" in x for x in lines)
    assert all("pts (SE of seeds" in t["line"] for v in results["verdicts"] for t in v.get("tasks", []))
    md = (tmp_path / "results" / "results.md").read_text()
    assert "--quick" in md and "| MM-LG |" in md and "## Verdicts" in md and "Machine: " in md
    assert "same-width/results.md" in md
    for png in ("curves", "retrieval"):
        assert (tmp_path / "results" / f"{png}.png").stat().st_size > 0
    units = sorted(p.name for p in (tmp_path / "results" / "units").iterdir())
    assert len(units) == len(members) + 2 + len(members) * (len(methods) + 2)
    capsys.readouterr()
    assert _bench().main(argv) == 0  # a rerun reuses every finished unit, from its committed record
    out = capsys.readouterr().out
    assert out.count("(from its record)") == len(units)
    assert not [p for p in (tmp_path / "results").rglob(".*")]  # no temp files left

    # A run another machine must finish: --partial reports the records present, running nothing, and says
    # which units are missing; each claim is computed over the members both of its methods have.
    gone = tmp_path / "results" / "units" / "mmlg-c-over-ratio-text-d1.json"
    gone.unlink()
    assert _bench().main(argv + ["--partial"]) == 0
    part = json.loads((tmp_path / "results" / "results.json").read_text())
    assert part["partial"]["missing"] == ["mmlg-c-over-ratio-text-d1"]
    assert "text-d1" not in part["runs"]["C/ratio"]["mmlg"] and "text-d1" in part["runs"]["C"]["mmlg"]
    md = (tmp_path / "results" / "results.md").read_text()
    assert f"**Partial: {len(units) - 1} of {len(units)} units.**" in md and "mmlg-c-over-ratio-text-d1" in md
    assert len(sorted((tmp_path / "results" / "units").iterdir())) == len(units) - 1  # nothing was run

    # Records of another ancestry (the same recipe trains other bits on another CPU) are refused, not replaced.
    rec = json.loads((tmp_path / "results" / "units" / "ptft-clip-d1.json").read_text())
    rec["identity"]["ancestry_weights"] = "0" * 16
    (tmp_path / "results" / "units" / "ptft-clip-d1.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert _bench().main(argv) == 2
    err = capsys.readouterr().err
    assert "1 unit record(s) of another run (ancestry_weights 0000000000000000 there" in err
    assert len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "results" / "units" / "ptft-clip-d1.json").read_text()) == rec


def test_report_rebuilds_the_committed_results_md(tmp_path):
    """`python -m benchmarks.learngene.report` writes the committed results.md again from its results.json, and
    the same-width control's report its own."""
    from benchmarks.learngene import report, same_width_report

    shutil.copy(RESULTS / "same-width" / "results.json", tmp_path / "results.json")
    assert same_width_report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "same-width" / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0
    if (RESULTS / "results.json").is_file():  # the width-gap protocol's, once it has run
        new = tmp_path / "width-gap"
        new.mkdir()
        shutil.copy(RESULTS / "results.json", new / "results.json")
        assert report.main(["--out", str(new)]) == 0
        assert (new / "results.md").read_text() == (RESULTS / "results.md").read_text()


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
