"""The CLIP-MoE benchmark's --quick mode end to end (a stand-in tiny ancestry), and its resumability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.models.io import save
from clipforge.models.registry import build


def _bench():
    from clipforge.cli._bench import load_benchmark

    return load_benchmark(Path("benchmarks/clipmoe/run.py"), "clipforge_clipmoe_bench")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clipmoe")
    save(build("tiny", seed=0), root / "ancestry", provenance={"source": "test stand-in ancestry"})
    args = ["--quick", "--out", str(root / "out"), "--work", str(root / "work"), "--ancestry", str(root / "ancestry")]
    assert _bench().main(args) == 0
    return root


def test_quick_benchmark_writes_every_table_and_plot(quick_results):
    out = quick_results / "out"
    res = json.loads((out / "results.json").read_text())
    assert set(res["main"]) == {"base", "direct FT (FFN)", "direct FT (full)", "sparse upcycling", "w/o MCL",
                                "CLIP-MoE"}
    for name, row in res["main"].items():
        assert 0.0 <= row["metrics"]["t2i_r1"]["mean"] <= row["metrics"]["t2i_r10"]["mean"] <= 1.0, name
        assert row["cost"]["params_stored"] >= row["cost"]["params_active_per_token"] > 0
    assert res["main"]["CLIP-MoE"]["cost"]["params_stored"] > res["main"]["base"]["cost"]["params_stored"]
    assert set(res["table1_stages_mmvp"]) == {"stage0 (base)", "stage1", "stage2", "CLIP-MoE"}
    assert set(res["ablation"]) == {"k2 FFN", "k3 FFN+attn"}
    assert res["ablation"]["k3 FFN+attn"]["trains"] == "ffn+attention"
    md = (out / "results.md").read_text()
    assert res["command"] in md and "## Table 1" in md and "## Ablation" in md
    for png in ("main.png", "table1_stages_mmvp.png", "ablation.png", "fig3_routing.png"):
        assert (out / "plots" / png).stat().st_size > 1000, png


def test_rerun_reuses_every_unit(quick_results):
    before = json.loads((quick_results / "out" / "results.json").read_text())
    args = ["--quick", "--out", str(quick_results / "out2"), "--work", str(quick_results / "work"),
            "--ancestry", str(quick_results / "ancestry")]
    assert _bench().main(args) == 0
    after = json.loads((quick_results / "out2" / "results.json").read_text())
    assert after["main"] == before["main"] and after["ablation"] == before["ablation"]
