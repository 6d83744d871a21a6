"""`python -m benchmarks.perf.run --quick`: every part (train overhead, eval throughput, MoE layer, speed
options, step profile) in one results file."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "results"


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.perf.run")


@pytest.mark.slow
@pytest.mark.timeout(120)  # about 10 s when the machine is free; the bound only catches a hang
def test_quick_run_writes_every_part(tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        # One thread: the test suite shares the machine; the benchmark's default is all cores.
        assert bench.main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it process-wide
    r = json.loads((out / "results.json").read_text())
    assert r["command"].startswith("python -m benchmarks.perf.run --quick") and r["quick"] is True
    assert r["machine"]["torch"] == torch.__version__ and r["machine"]["threads"] == 1

    train = r["train"]
    cases = bench.train_cases(quick=True, cuda=torch.cuda.is_available())
    assert [(c["arch"], c["batch"]) for c in train["cases"]] == [tuple(c) for c in cases]
    for c in train["cases"]:
        for loop in ("clipforge", "bare"):
            assert c["ms_per_step"][loop] > 0 and math.isfinite(c["ms_per_step"][loop]), c
            # Warm-up and the extra last step are not timed: exactly `steps` per round.
            assert len(c["step_ms"][loop]) == train["steps"] * train["rounds"]
        assert math.isfinite(c["overhead"]) and c["overhead"] > -1
        assert c["within_goal"] == (c["overhead"] <= train["goal"])

    ev = r["eval"]
    assert ev["n"] == 64 and ev["images_per_s"] > 0 and ev["captions_per_s"] > 0
    assert math.isfinite(ev["images_per_s"]) and math.isfinite(ev["captions_per_s"])

    moe = r["moe"]
    assert [s["name"] for s in moe["shapes"]] == ["tiny-vision", "tiny-text"]
    for s in moe["shapes"]:
        assert math.isfinite(s["ratio_vs_two_dense"]) and math.isfinite(s["ratio_vs_released_loop"])
        assert 0 <= s["max_abs_diff"] < 1e-5

    opts = r["options"]
    assert opts["peaks"]["float32"]["gflops"] > 0 and opts["peaks"]["bfloat16"]["gflops"] > 0
    rows = opts["cases"][0]["rows"]
    names = [row["option"] for row in rows]
    assert names[0].startswith("today's default") and names[-1].startswith("new default")
    assert {"foreach AdamW", "fused AdamW", "eager attention"} <= set(names)
    for row in rows:
        assert row["ms_per_step"] > 0 and row["gflop_per_step"] > 0
        assert row["gflops"] == pytest.approx(row["gflop_per_step"] / (row["ms_per_step"] / 1e3))
        assert row["share_fp32_peak"] == pytest.approx(row["gflops"] / opts["peaks"]["float32"]["gflops"])
    assert rows[0]["speedup_vs_today"] == 1.0
    prof = r["profile"]
    for o in prof["optimizers"].values():
        cats = o["categories_ms"]
        assert cats["AdamW update"] > 0 and cats["matmul: linear layers, logits (fwd + bwd)"] > 0
        assert sum(o["categories_ms"].values()) == pytest.approx(o["profiled_self_ms"])
        assert 0 < o["token_embedding_rows_with_grad"] < o["token_embedding_rows"] == 49408
    assert all(v > 0 for v in prof["data_ms"].values())

    md = (out / "results.md").read_text()
    assert md.startswith("`python -m benchmarks.perf.run --quick")
    assert all(h in md for h in ("## Training step", "## Evaluation", "## MoE", "## Training step under each",
                                 "## Where the tiny step's time goes")) and "tiny-text" in md
    assert not list(out.glob(".*"))  # atomic writes leave no temp files behind


def test_step_times_skip_warmup() -> None:
    """Stamps mark each step's start: step k lasts until step k+1's stamp; warm-up steps are dropped."""
    bench = _bench()
    assert bench.step_ms([0.0, 1.0, 3.0, 6.0], warmup=1) == pytest.approx([2000.0, 3000.0])
    assert bench.step_ms([0.0, 1.0], warmup=1) == []


def test_report_rebuilds_the_committed_results_md(tmp_path: Path) -> None:
    """`python -m benchmarks.perf.report` writes the committed results.md again from its results.json (a record
    from before the attention kernel was chosen per model included)."""
    from benchmarks.perf import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
