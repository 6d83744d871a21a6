"""`python -m benchmarks.clipmoe.run --quick` end to end (a stand-in tiny ancestry), its resumability, and
its report rebuilt from the committed record."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from clipforge.models.io import save
from clipforge.models.registry import build

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "clipmoe" / "results"


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.clipmoe.run")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clipmoe")
    save(build("tiny", seed=0), root / "ancestry", provenance={"source": "test stand-in ancestry"})
    args = ["--quick", "--out", str(root / "out"), "--work", str(root / "work"), "--ancestry", str(root / "ancestry")]
    assert _bench().main(args) == 0
    return root


@pytest.mark.slow
def test_quick_benchmark_writes_every_table_and_plot(quick_results):
    out = quick_results / "out"
    res = json.loads((out / "results.json").read_text())
    assert set(res["main"]) == {"base", "direct FT (FFN)", "direct FT (full)", "sparse upcycling", "w/o MCL",
                                "CLIP-MoE", "CLIP-MoE (1x1)"}
    assert res["budget"]["caption_style"] == "dense"
    for name in ("CLIP-MoE", "CLIP-MoE (1x1)"):
        rep = res["main"][name]["clusters"]
        assert set(rep) == {"stage1", "stage2"} and all(r["mean_batches_per_cluster"] > 0 for r in rep.values())
    # one verdict line per claim, computed from the numbers, naming its figures
    # 9 paired claims, Table 2's best baseline, Table 1 (stages, 3 attributes), Fig. 3
    assert len(res["verdicts"]) == 9 + 1 + 1 + 3 + 1
    for v in res["verdicts"]:
        assert (": holds (" in v["line"]) != (": does not hold (" in v["line"])
        if "diff" in v:
            assert f"{100 * v['diff']:+.1f}" in v["line"] and v["seeds"] == [0]
    for key in ("dense_t2i_r1", "alt_t2i_r1", "fmnist_acc1"):
        assert key in res["main"]["CLIP-MoE"]["metrics"]
    for name, row in res["main"].items():
        assert 0.0 <= row["metrics"]["t2i_r1"]["mean"] <= row["metrics"]["t2i_r10"]["mean"] <= 1.0, name
        assert row["cost"]["params_stored"] >= row["cost"]["params_active_per_token"] > 0
    assert res["main"]["CLIP-MoE"]["cost"]["params_stored"] > res["main"]["base"]["cost"]["params_stored"]
    assert set(res["table1_stages_mmvp"]) == {"stage0 (base)", "stage1", "stage2", "CLIP-MoE"}
    assert set(res["ablation"]) == {"k2 FFN", "k3 FFN+attn"}
    assert res["ablation"]["k3 FFN+attn"]["trains"] == "ffn+attention"
    md = (out / "results.md").read_text()
    assert res["command"].startswith("python -m benchmarks.clipmoe.run --quick")
    assert res["command"] in md and "## Table 1" in md and "## Ablation" in md and "## What it shows" in md
    assert (out / "units" / "seed0.json").is_file() and res["seed_runs"]["0"]["command"] == res["command"]
    assert res["machine"]["torch"] and "Machine: " in md
    for png in ("main.png", "table1_stages_mmvp.png", "ablation.png", "fig3_routing.png"):
        assert (out / "plots" / png).stat().st_size > 1000, png


@pytest.mark.slow
def test_rerun_reuses_every_unit(quick_results):
    before = json.loads((quick_results / "out" / "results.json").read_text())
    args = ["--quick", "--out", str(quick_results / "out2"), "--work", str(quick_results / "work"),
            "--ancestry", str(quick_results / "ancestry")]
    assert _bench().main(args) == 0
    after = json.loads((quick_results / "out2" / "results.json").read_text())
    assert after["main"] == before["main"] and after["ablation"] == before["ablation"]


@pytest.mark.slow
def test_committed_seed_records_are_reused_without_the_work_directory(quick_results, monkeypatch):
    """A later session on another machine (no runs/) redoes only the seeds whose record is missing."""
    out = quick_results / "out3"
    shutil.copytree(quick_results / "out" / "units", out / "units")
    bench = _bench()
    monkeypatch.setattr(bench.Bench, "clip_moe", lambda *a, **k: pytest.fail("a recorded seed was retrained"))
    args = ["--quick", "--out", str(out), "--work", str(quick_results / "work_fresh"),
            "--ancestry", str(quick_results / "ancestry"), "--part", "main"]
    assert bench.main(args) == 0


@pytest.mark.slow
def test_seed_records_of_another_ancestry_with_the_same_recipe_are_not_reused(quick_results, monkeypatch):
    """The same recipe trains other weights where the kernels differ: the weights' digest is in the identity."""
    other = quick_results / "ancestry-other-weights"
    save(build("tiny", seed=1), other, provenance={"source": "test stand-in ancestry"})
    out = quick_results / "out4"
    shutil.copytree(quick_results / "out" / "units", out / "units")
    bench = _bench()

    class Retrained(Exception):
        pass

    def retrain(*a, **k):
        raise Retrained

    monkeypatch.setattr(bench.Bench, "clip_moe", retrain)
    args = ["--quick", "--out", str(out), "--work", str(quick_results / "work_other"), "--ancestry", str(other),
            "--part", "main"]
    with pytest.raises(Retrained):
        bench.main(args)


def test_verdicts_follow_the_numbers():
    from benchmarks.clipmoe import report

    base = {"headline": {"dense_t2i_r1": 0.10, "fmnist_acc1": 0.80}}

    def unit(dense, fmnist):
        return {s: {"headline": {"dense_t2i_r1": d, "fmnist_acc1": f}}
                for s, (d, f) in enumerate(zip(dense, fmnist, strict=True))}

    units = {"direct FT (full)": unit([0.20, 0.21, 0.19], [0.60, 0.62, 0.61]),   # gains retrieval, forgets
             "CLIP-MoE": unit([0.22, 0.23, 0.21], [0.800, 0.795, 0.805]),       # gains, keeps zero-shot
             "direct FT (FFN)": unit([0.25, 0.26, 0.24], [0.8, 0.8, 0.8])}       # better on retrieval than MoE
    got = {v["claim"].split(" (paper")[0]: v["holds"] for v in report.verdicts(units, base)}
    assert got == {"direct FT (full) raises dense-caption T→I R@1 over the base": True,
                   "direct FT (full) loses Fashion-MNIST zero-shot, more than 1 point": True,
                   "CLIP-MoE raises dense-caption T→I R@1 over the base": True,
                   "CLIP-MoE keeps Fashion-MNIST zero-shot within 1 point of the base": True,
                   "CLIP-MoE beats direct FT (full) on Fashion-MNIST zero-shot": True,
                   "CLIP-MoE beats direct FT (FFN) on dense T→I R@1": False}
    v = report.verdicts(units, base)[0]
    assert "+10.0 ± 0.6 points" in v["line"] and "[0, 1, 2]" in v["line"]


def test_claim_verdicts_choose_their_comparison_from_the_numbers():
    from benchmarks.clipmoe import report

    attrs = [a for a in report.ATTRS if a != "mean"]
    base = {"headline": {"dense_t2i_r1": 0.10, **{f"mmvp_{a}": 0.5 for a in attrs}}}

    def unit(dense, **mmvp):
        return {s: {"headline": {"dense_t2i_r1": dense + 0.01 * s, **{f"mmvp_{a}": mmvp.get(a, 0.5) + 0.01 * s
                                                                      for a in attrs}}} for s in range(3)}

    units = {"direct FT (full)": unit(0.30), "sparse upcycling": unit(0.20), "direct FT (FFN)": unit(0.25),
             "CLIP-MoE": unit(0.29, binding=0.6, relation=0.7, count=0.45),
             "stage1": unit(0.2, shape=0.9), "stage2": unit(0.2, size=0.9), "stage3": unit(0.2)}
    # [slot][block][expert]: vision expert 1 takes 15 % of block 1's slots; text expert 1 at most 5 %
    routing = {"num_experts": 2, "samples": 10,
               "vision": {"share": [[[0.95, 0.05], [0.8, 0.2]], [[0.95, 0.05], [0.9, 0.1]]]},
               "text": {"share": [[[0.95, 0.05], [0.97, 0.03]], [[0.95, 0.05], [0.97, 0.03]]]}}
    got = {v["claim"]: v for v in report.claim_verdicts(units, base, routing)}
    t2 = next(v for k, v in got.items() if k.startswith("Table 2"))
    assert "direct FT (full)" in t2["claim"] and not t2["holds"]  # 0.01 below at every seed: significantly below
    units["CLIP-MoE"] = unit(0.30, binding=0.6, relation=0.7, count=0.45)
    assert next(v for v in report.claim_verdicts(units, base, routing) if v["claim"].startswith("Table 2"))["holds"]
    assert got["Table 1: the stage models are best on different attributes"]["holds"]
    rising = {k.split("MMVP ")[1].split(" ")[0]: v["holds"] for k, v in got.items() if "raises MMVP" in k}
    assert rising == {"binding": True, "relation": True, "count": False}
    fig3 = got["Fig. 3: every expert takes at least 10 % of the top-k slots in some block"]
    assert not fig3["holds"] and "text 5.0 %" in fig3["line"]  # text expert 1 never above 5 %


def test_seed_records_in_the_first_layout_are_read(tmp_path):
    """Records written before `harness.Units` (the seed's fields at the top level) still count."""
    from benchmarks.clipmoe.bench import Budget
    from benchmarks.clipmoe.run import _seed_records

    anc = tmp_path / "ancestry"
    save(build("tiny", seed=0), anc, provenance={"source": "test stand-in ancestry"})
    records = _seed_records(tmp_path / "out", Budget.quick(), anc)
    (tmp_path / "out" / "units").mkdir(parents=True)
    (tmp_path / "out" / "units" / "seed0.json").write_text(json.dumps(
        {"identity": records.identity, "seed": 0, "units": {"CLIP-MoE": {"headline": {}}}}))
    assert records.get("seed0") == {"seed": 0, "units": {"CLIP-MoE": {"headline": {}}}, "run": None}


def test_report_rebuilds_the_committed_results_md(tmp_path):
    """`python -m benchmarks.clipmoe.report` writes the committed results.md again from its results.json."""
    from benchmarks.clipmoe import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
    assert (tmp_path / "plots" / "fig3_routing.png").stat().st_size > 1000
