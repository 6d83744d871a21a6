"""`python -m benchmarks.moe_layer.run --quick`: every shape timed, the released loop checked against the moe layer."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "moe_layer" / "results"


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.moe_layer.run")


@pytest.mark.slow
def test_quick_run_writes_every_shape(tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        # One thread: the test suite shares the machine; the benchmark's default is all cores.
        assert bench.main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it process-wide
    results = json.loads((out / "results.json").read_text())
    expected = [s.name for s in bench.shapes(quick=True, cuda=torch.cuda.is_available())]
    assert [r["name"] for r in results["shapes"]] == expected
    assert results["command"].startswith("python -m benchmarks.moe_layer.run --quick")
    assert results["device"]["torch"] == torch.__version__ and results["device"]["threads"] == 1
    for r in results["shapes"]:
        assert set(r["ms"]) == {"moe", "moe_grouped", "two_dense", "released_loop"}
        assert all(t > 0 and math.isfinite(t) for t in r["ms"].values()), r
        assert math.isfinite(r["ratio_vs_two_dense"]) and math.isfinite(r["ratio_vs_released_loop"]) \
            and math.isfinite(r["ratio_grouped_vs_moe"]), r
        assert 0 <= r["max_abs_diff"] < 1e-5, r  # the equivalence check ran, with the same weights
        assert sum(r["expert_load"]) == r["batch"] * r["seq"] * results["top_k"]
    md = (out / "results.md").read_text()
    assert md.startswith("`python -m benchmarks.moe_layer.run --quick") and all(n in md for n in expected)
    assert not list(out.glob(".*"))  # atomic writes leave no temp files behind


def test_released_loop_matches_moe_layer_on_uneven_routing() -> None:
    """The re-implemented released loop equals MoEFFN also when an expert gets no token at all."""
    bench = _bench()
    layers, diff, _ = bench.build(bench.Shape("t", 16, 32, "gelu", 2, 5), torch.device("cpu"))
    moe, loop = layers["moe"], layers["released_loop"]
    with torch.no_grad():
        # Push expert 3 out of every top-2: a huge negative logit for it on every input.
        moe.router.weight[3] = -100 * moe.router.weight[:3].abs().sum(0)
        loop.gate.weight.copy_(moe.router.weight)
        x = torch.randn(2, 5, 16).abs()
        assert not (moe.route(x.reshape(-1, 16))[2] == 3).any()
        assert torch.allclose(moe(x)[0], loop(x)[0], atol=1e-6)
    assert diff < 1e-5


def test_report_rebuilds_the_committed_results_md(tmp_path: Path) -> None:
    """`python -m benchmarks.moe_layer.report` writes the committed results.md again from its results.json."""
    from benchmarks.moe_layer import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
