"""`clipforge demo --quick`: the whole pipeline at toy budgets, and the report's structure."""

from __future__ import annotations

import json
import re
import time

import pytest

from clipforge.cli import main
from clipforge.demo.verdicts import (
    QUALITY_KEPT_MIN,
    ZEROSHOT_TOLERANCE_PTS,
    Verdict,
    verdict_lines,
    verdicts,
)
from clipforge.models.io import read_provenance

pytestmark = pytest.mark.slow  # end to end: the whole command on tiny models


def test_quick_demo_writes_the_whole_report(tmp_path, capsys, monkeypatch):
    out, anc = tmp_path / "demo", tmp_path / "ancestry"
    monkeypatch.setenv("CLIPFORGE_DEMO_STARTED", str(time.time() - 60))  # as scripts/demo.sh sets it
    t = time.perf_counter()
    assert main(["demo", "--quick", "--compose", "--out", str(out), "--ancestry", str(anc)]) == 0
    first = time.perf_counter() - t
    printed = capsys.readouterr().out
    assert "no cached ancestry" in printed and "about" in printed and "left in all" in printed
    assert "s of set-up so far: about" in printed and "since scripts/demo.sh started" in printed

    demo = json.loads((out / "demo.json").read_text())
    assert 60 <= demo["setup_s"] < 60 + first
    assert set(demo["phases_s"]) == {"ancestry", "clip_moe", "direct_ft", "learngene", "descendants", "scratch",
                                     "composed", "evaluate", "report"}
    names = set(demo["models"])
    assert {"ancestry", "CLIP-MoE", "direct FT (full)"} <= names
    for prefix in ("MM-LG clip", "MM-LG vision", "MM-LG text", "Scratch clip", "CLIP-MoE of MM-LG"):
        assert any(n.startswith(prefix) for n in names), prefix

    md = (out / "report.md").read_text()
    # the report opens with its verdicts, one line per claim, each with "holds" or "does not hold"
    assert md.startswith("# clipforge demo: one CLIP becomes a family\n\n## What this run shows\n\n- ")
    verdict_part = md.split("## What this run shows", 1)[1].split("**Contents**", 1)[0]
    bullets = [b for b in verdict_part.splitlines() if b.startswith("- ")]
    assert bullets and all(("**holds**" in b) != ("**does not hold**" in b) for b in bullets), bullets
    assert any(b.startswith("- CLIP-MoE: ") for b in bullets) and any(b.startswith("- MM-LG clip") for b in bullets)
    for section in ("## The family", "## What each model sees", "## Size against quality", "## Inside the CLIP-MoE",
                    "## Sample retrievals", "## Training curves", "## Wall time per phase"):
        assert section in md, section
    for name in names:  # every model has its row in the family table
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.MULTILINE), name
    for png in ("tradeoff", "routing", "experts_mmvp", "retrievals", "curves"):
        assert f"plots/{png}.png" in md and (out / "plots" / f"{png}.png").stat().st_size > 2000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table" in html
    # the recipes the benchmarks measured: DMU of epoch stages at the base's logit scale, compute-matched FT,
    # and a learngene (so its family) narrower than the ancestry in both towers
    plan, widths = demo["compute"]["clip_moe"], demo["compute"]["widths"]
    assert str(plan["stage_steps"]).startswith("one epoch") and plan["logit_scale"] is not None
    ft = read_provenance(out / "direct_ft" / "model")
    assert ft["settings"]["config"]["schedule"]["steps"] == plan["total_steps"] == 3 * 16 + 16  # 128 at batch 8
    assert all(widths["learngene"][t] < widths["ancestry"][t] for t in ("vision", "text")), widths
    assert "fixed at the ancestry's learned" in md and "of the ancestry's widths in whole heads" in md

    # a rerun reuses every phase
    t = time.perf_counter()
    assert main(["demo", "--quick", "--compose", "--out", str(out), "--ancestry", str(anc)]) == 0
    assert time.perf_counter() - t < first
    # --report-only writes the same report again from the run's records (no training), and refuses a non-demo
    before, stamp = (out / "report.md").read_text(), (out / "report.md").stat().st_mtime_ns
    assert main(["demo", "--report-only", "--out", str(out)]) == 0
    after = (out / "report.md").read_text()
    wall = "## Wall time per phase"  # the rewrite knows the report phase's own time too
    assert after.split(wall)[0] == before.split(wall)[0] and (out / "report.md").stat().st_mtime_ns > stamp
    assert main(["demo", "--report-only", "--out", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


# --- verdicts: pure functions of the measured records -----------------------------------------------------

def _clip(t2i: float, i2t: float, zs: float, params: int, alt: tuple[float, float] | None = None) -> dict:
    h = {"t2i_r1": t2i, "i2t_r1": i2t, "fmnist_acc1": zs}
    if alt is not None:
        h |= {"alt_t2i_r1": alt[0], "alt_i2t_r1": alt[1]}
    return {"kind": "clip", "headline": h, "cost": {"params_stored": params, "params_active_per_token": params}}


def _family(good: bool) -> dict[str, dict]:
    """A synthetic run: every claim holds when `good`, none does otherwise (ties and a 1.5-point drop)."""
    anc = _clip(0.400, 0.380, 0.700, 1_000_000, alt=(0.300, 0.280))
    if good:
        moe = _clip(0.450, 0.420, 0.695, 1_200_000, alt=(0.350, 0.330))
        desc = _clip(0.380, 0.360, 0.660, 500_000)  # keeps 94.9% of R@1, 94.3% of zero-shot
        composed = _clip(0.400, 0.370, 0.655, 600_000)
    else:
        moe = _clip(0.450, 0.380, 0.675, 1_200_000, alt=(0.290, 0.330))  # I→T tie; zero-shot −2.5 points
        desc = _clip(0.300, 0.280, 0.660, 500_000)  # keeps 75.3% of R@1
        composed = _clip(0.290, 0.300, 0.635, 600_000)  # T→I down vs its seed; zero-shot −2.5 points
    scratch = _clip(0.200, 0.180, 0.500, 500_000) if good else _clip(0.350, 0.300, 0.500, 500_000)
    # good: fine-tuning raises retrieval and keeps zero-shot, CLIP-MoE matches it (43.5 vs 42.5) and keeps more;
    # bad: fine-tuning loses I→T and 2.3 points of zero-shot, yet beats CLIP-MoE on both (43.5 vs 41.5, 67.7 vs 67.5)
    ft = _clip(0.440, 0.410, 0.692, 1_000_000) if good else _clip(0.500, 0.370, 0.677, 1_000_000)
    return {"ancestry": anc, "CLIP-MoE": moe, "direct FT (full)": ft, "MM-LG clip 2+2": desc,
            "Scratch clip 2+2": scratch,
            "MM-LG vision 2": {"kind": "vision", "headline": {"fmnist_probe_acc1": 0.8},
                               "cost": {"params_stored": 20_000, "params_active_per_token": 20_000}},
            "CLIP-MoE of MM-LG clip 2+2": composed}


def _outcomes(found: list[Verdict]) -> dict[tuple[str, str], bool]:
    def topic(claim: str) -> str:
        if "direct FT" in claim:
            return "vs FT zero-shot" if "zero-shot" in claim else "vs FT retrieval"
        for key in ("held-out scenes", "alt-text", "zero-shot", "quality", "beats"):
            if key in claim:
                return key
        raise AssertionError(claim)

    out = {(v.method, topic(v.claim)): v.holds for v in found}
    assert len(out) == len(found), "one verdict per method and claim"
    return out


EXPECTED_CLAIMS = {("CLIP-MoE", "held-out scenes"), ("CLIP-MoE", "alt-text"), ("CLIP-MoE", "zero-shot"),
                   ("direct FT (full)", "held-out scenes"), ("direct FT (full)", "zero-shot"),
                   ("CLIP-MoE", "vs FT retrieval"), ("CLIP-MoE", "vs FT zero-shot"),
                   ("MM-LG clip 2+2", "quality"), ("MM-LG clip 2+2", "beats"),
                   ("CLIP-MoE of MM-LG clip 2+2", "held-out scenes"), ("CLIP-MoE of MM-LG clip 2+2", "zero-shot")}


def test_verdicts_decide_a_synthetic_run_both_ways() -> None:
    good, bad = _outcomes(verdicts(_family(True))), _outcomes(verdicts(_family(False)))
    # The vision descendant shares no metric with the ancestry, and the composed model's seed has no
    # alt-text retrieval: those claims are skipped, not guessed.
    assert set(good) == set(bad) == EXPECTED_CLAIMS
    assert all(good.values()), good
    assert not any(bad.values()), bad
    for v in verdicts(_family(True)) + verdicts(_family(False)):
        assert v.line().count("holds") + v.line().count("does not hold") == 1


def test_verdicts_thresholds_and_skips() -> None:
    anc = _clip(0.4, 0.4, 0.700, 1_000)
    at_tol = _clip(0.5, 0.5, 0.700 - ZEROSHOT_TOLERANCE_PTS / 100, 1_000)  # exactly at the tolerance: holds
    past_tol = _clip(0.5, 0.5, 0.700 - ZEROSHOT_TOLERANCE_PTS / 100 - 0.001, 1_000)
    assert _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": at_tol}))[("CLIP-MoE", "zero-shot")]
    assert not _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": past_tol}))[("CLIP-MoE", "zero-shot")]
    kept = _clip(0.4 * QUALITY_KEPT_MIN, 0.4 * QUALITY_KEPT_MIN, 0.7 * QUALITY_KEPT_MIN, 500)
    assert _outcomes(verdicts({"ancestry": anc, "MM-LG clip 1+1": kept}))[("MM-LG clip 1+1", "quality")]
    # Nothing to compare: no verdict at all (no ancestry, no Scratch, no seed).
    assert verdicts({"CLIP-MoE": at_tol, "MM-LG clip 1+1": kept, "CLIP-MoE of MM-LG clip 3+3": at_tol}) == []


def test_every_verdict_line_names_its_figures() -> None:
    lines = verdict_lines(_family(True)) + verdict_lines(_family(False))
    for v in verdicts(_family(True)) + verdicts(_family(False)):
        line = v.line(markup=False)
        assert line.startswith(f"{v.method}: {v.claim}: ") and line.endswith(f"({v.figures})")
        assert len(re.findall(r"\d+\.\d%", v.figures)) >= 2, line  # the model's figure and its reference's

    def line(start: str) -> str:
        return next(x for x in lines if x.startswith(start))

    moe = line("CLIP-MoE: raises held-out")
    assert all(s in moe for s in ("40.0%", "45.0%", "+5.0 pts", "38.0%", "42.0%", "+4.0 pts")), moe
    zs = line("CLIP-MoE: keeps Fashion-MNIST")
    assert all(s in zs for s in ("70.0%", "69.5%", "-0.5 pts")), zs
    # mean R@1 37.0% vs 39.0% (94.9% kept), zero-shot 66.0% vs 70.0% (94.3% kept), half the parameters
    q = line("MM-LG clip 2+2: keeps at least")
    assert all(s in q for s in ("37.0%", "39.0%", "94.9%", "66.0%", "70.0%", "94.3%", "50.0%")), q
    scratch = line("MM-LG clip 2+2: beats Scratch")
    assert all(s in scratch for s in ("19.0%", "37.0%", "50.0%", "66.0%")), scratch
    vs_ft = line("CLIP-MoE: beats direct FT (full) at equal steps on Fashion-MNIST")
    assert all(s in vs_ft for s in ("69.2%", "69.5%", "+0.3 pts")), vs_ft
    assert "CLIP-MoE 69.5% vs direct FT (full) 69.2%" in vs_ft, vs_ft  # each figure beside its model
    composed = verdict_lines(_family(False))[-1]  # the bad run's composed model: −2.5 points of zero-shot
    assert composed.startswith("CLIP-MoE of MM-LG clip 2+2: keeps"), composed
    assert all(s in composed for s in ("66.0%", "63.5%", "-2.5 pts")), composed


def test_report_opens_with_the_verdicts(tmp_path) -> None:
    from clipforge.demo.pipeline import DemoConfig
    from clipforge.demo.report import verdict_section
    from clipforge.report.document import Report

    r = Report("demo")
    verdict_section(r, _family(False), DemoConfig.quick_config())
    r.contents().heading("The family")
    md = r.to_markdown()
    assert md.startswith("# demo\n\n## What this run shows\n\n- CLIP-MoE: ")
    section = md.split("## What this run shows", 1)[1].split("\n## ", 1)[0]
    bullets = [b for b in section.splitlines() if b.startswith("- ") and "](#" not in b]
    assert len(bullets) == len(EXPECTED_CLAIMS) and all("**does not hold**" in b for b in bullets)
    assert md.index("**Contents**") > md.index("## What this run shows")
    assert "What this run shows" in r.to_html().split("<nav", 1)[0]


def test_progress_scales_what_is_left_by_the_pace_so_far(capsys) -> None:
    from clipforge.demo.pipeline import Progress

    p = Progress({"a": 100, "b": 200, "c": 10})
    assert p.pace() == 1.0  # nothing run yet
    p.done["c"] = 50.0  # a short phase says nothing about the machine
    assert p.pace() == 1.0
    p.done["a"] = 130.0  # 30 % slower than estimated
    assert abs(p.pace() - 1.3) < 1e-9
    p.run("b", "b", lambda: None)
    assert "about 4.3 min left in all" in capsys.readouterr().out  # 200 s × 1.3
    p.done["a"] = 1000.0
    from clipforge.demo.pace import PACE_RANGE

    assert p.pace() == PACE_RANGE[1]  # clamped


def test_machine_pace_is_the_step_time_ratio_clamped(monkeypatch) -> None:
    from clipforge.demo import pace

    assert pace.step_seconds("tiny", batch=4, warmup=0, steps=1) > 0  # a real (tiny) measurement
    monkeypatch.setattr(pace, "step_seconds", lambda **kw: 2.6)
    assert pace.machine_pace(2.0) == (1.3, 2.6)
    assert pace.machine_pace(0.0) == (1.0, 2.6)  # no reference: unscaled
    assert pace.machine_pace(100.0)[0] == pace.PACE_RANGE[0]


def test_setup_seconds_reads_the_start_scripts_demo_sh_sets(monkeypatch) -> None:
    from clipforge.demo.pipeline import setup_seconds

    monkeypatch.delenv("CLIPFORGE_DEMO_STARTED", raising=False)
    assert setup_seconds() is None
    monkeypatch.setenv("CLIPFORGE_DEMO_STARTED", str(time.time() - 150))
    assert 150 <= setup_seconds() < 160
    for bad in ("soon", str(time.time() + 100)):
        monkeypatch.setenv("CLIPFORGE_DEMO_STARTED", bad)
        assert setup_seconds() is None


def test_calibration_scales_every_estimate(monkeypatch, capsys) -> None:
    from clipforge.demo import pace
    from clipforge.demo.pipeline import Progress, _calibrate

    monkeypatch.setattr(pace, "step_seconds", lambda **kw: 3.0)
    monkeypatch.setattr(pace, "REFERENCE_STEP_S", 2.0)
    p = Progress({"a": 100, "b": 10})
    rec = _calibrate(p)
    assert p.estimates == {"a": 150, "b": 15} and rec["pace"] == 1.5
    assert "pace 1.50" in capsys.readouterr().out


def test_a_cache_that_cannot_exist_fails_before_anything_is_written(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--out", str(out), "--cache", str(tmp_path / "file" / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache" in err[0] and "cannot create" in err[0]
    assert not out.exists()


def test_verdicts_hold_only_beyond_two_standard_errors() -> None:
    """The same synthetic run, now with its test-set sizes: a gain inside the binomial noise does not hold."""
    anc = _clip(0.040, 0.040, 0.700, 1_000)
    moe = _clip(0.050, 0.050, 0.695, 1_200)  # +1.0 point of R@1 near 4 %; zero-shot −0.5 points
    few, many = {"scenes": 1_000, "fmnist": 10_000}, {"scenes": 50_000, "fmnist": 10_000}
    assert _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": moe}))[("CLIP-MoE", "held-out scenes")]  # no SE
    assert not _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": moe}, few))[("CLIP-MoE", "held-out scenes")]
    assert _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": moe}, many))[("CLIP-MoE", "held-out scenes")]
    line = verdict_lines({"ancestry": anc, "CLIP-MoE": moe}, items=few)[0]
    assert "(+1.0 ± 0.9 pts)" in line and "does not hold" in line, line  # sqrt(.05·.95/1000 + .04·.96/1000)
    # keeping zero-shot within 2 points needs the drop plus two SEs inside it: −0.5 ± 0.65 is at worst −1.8,
    # −1.0 ± 0.65 may be −2.3 on 10,000 images, and only −1.1 on a million
    assert _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": moe}, few))[("CLIP-MoE", "zero-shot")]
    drop = _clip(0.050, 0.050, 0.690, 1_200)
    assert not _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": drop}, few))[("CLIP-MoE", "zero-shot")]
    big = {"scenes": 1_000, "fmnist": 1_000_000}
    assert _outcomes(verdicts({"ancestry": anc, "CLIP-MoE": drop}, big))[("CLIP-MoE", "zero-shot")]
    # keeping 90 % of quality: 0.37 vs 0.39 keeps 94.9 %, which is 2.0 points of R@1 above 90 %
    kept = _clip(0.370, 0.370, 0.66, 500)
    base = _clip(0.390, 0.390, 0.70, 1_000)
    assert _outcomes(verdicts({"ancestry": base, "MM-LG clip 1+1": kept}, many))[("MM-LG clip 1+1", "quality")]
    assert not _outcomes(verdicts({"ancestry": base, "MM-LG clip 1+1": kept}, {"scenes": 300, "fmnist": 300})
                         )[("MM-LG clip 1+1", "quality")]
