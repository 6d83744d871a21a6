"""`python -m benchmarks.gpu.run --quick`: every unit measured on the CPU at tiny shapes, its ratios computed from
its timings, the checkpointing peaks recorded, and a rerun that measures nothing again."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

UNITS = ("train_step", "moe_layer", "eval_throughput", "router_checkpointing")


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.gpu.run")


def _positive(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and x > 0 and math.isfinite(x) for x in xs)


def _unit(tag_dir: Path, name: str) -> dict[str, Any]:
    rec = json.loads((tag_dir / f"{name}.json").read_text())
    assert rec["name"] == name and rec["identity"]["plan"]["quick"] is True
    return rec["unit"]


def test_quick_run_measures_every_unit_then_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _bench()
    out = tmp_path / "out"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    (tag_dir,) = [d for d in out.iterdir() if d.is_dir()]  # one device tag: this CPU
    assert tag_dir.name.startswith("cpu-")

    train = _unit(tag_dir, "train_step")
    for loop in ("clipforge", "bare"):
        r = train[loop]
        assert len(r["step_ms"]) == 3 and _positive(*r["step_ms"], r["median_ms"], r["samples_per_s"]), r
        assert _positive(r["peak_memory_bytes"]) and "ru_maxrss" in r["memory_kind"]
    assert train["ratio_ms"] == pytest.approx(train["clipforge"]["median_ms"] / train["bare"]["median_ms"])
    assert train["ratio_samples_per_s"] == pytest.approx(
        train["clipforge"]["samples_per_s"] / train["bare"]["samples_per_s"])
    assert train["ratio_peak_memory"] == pytest.approx(
        train["clipforge"]["peak_memory_bytes"] / train["bare"]["peak_memory_bytes"])

    moe = _unit(tag_dir, "moe_layer")
    ms = moe["ms"]
    assert set(ms) == {"sparse", "grouped", "two_dense"} and _positive(*ms.values()) and not moe["errors"]
    assert moe["ratio_sparse_over_two_dense"] == pytest.approx(ms["sparse"] / ms["two_dense"])
    assert moe["ratio_grouped_over_two_dense"] == pytest.approx(ms["grouped"] / ms["two_dense"])
    assert sum(moe["expert_load"]) == 8 * 26 * 2  # every token routed to two experts

    ev = _unit(tag_dir, "eval_throughput")
    assert _positive(ev["images_per_s"], ev["texts_per_s"], ev["tower_images_per_s"], ev["image_s"], ev["text_s"])
    assert ev["images_per_s"] == pytest.approx(64 / ev["image_s"]) and ev["texts_per_s"] == pytest.approx(
        128 / ev["text_s"])

    ck = _unit(tag_dir, "router_checkpointing")
    off, on = ck["plain"], ck["checkpointed"]
    assert (off["checkpointing"], on["checkpointing"]) == (False, True)
    assert _positive(off["peak_memory_bytes"], on["peak_memory_bytes"], off["median_ms"], on["median_ms"])
    assert ck["ratio_peak_memory"] == pytest.approx(on["peak_memory_bytes"] / off["peak_memory_bytes"])
    assert ck["ratio_ms"] == pytest.approx(on["median_ms"] / off["median_ms"])
    assert 0 < off["trainable_params"] < off["params"]  # only the routers train

    results = json.loads((tag_dir / "results.json").read_text())
    assert set(results["units"]) == set(UNITS) and not results["failed"] and results["units_reused"] == []
    md = (tag_dir / "results.md").read_text()
    assert md.startswith("`python -m benchmarks.gpu.run --quick")
    assert all(s in md for s in ("## Training step", "## MoE layer", "## Evaluation throughput",
                                 "## Router training", "bf16" if results["device"]["amp"] == "bf16" else "fp32"))
    assert not list(tag_dir.glob(".*"))  # atomic writes leave no temp files behind

    records = {u: (tag_dir / f"{u}.json").read_text() for u in UNITS}
    capsys.readouterr()
    assert bench.main(["--quick", "--out", str(out)]) == 0  # the rerun: every unit from its record
    printed = capsys.readouterr().out
    assert "0 of 4 units to measure" in printed and printed.count("from its record") == 4
    assert {u: (tag_dir / f"{u}.json").read_text() for u in UNITS} == records
    assert json.loads((tag_dir / "results.json").read_text())["units_reused"] == sorted(UNITS)


def test_out_of_memory_is_a_record_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that runs out of memory reports "out of memory at batch B"; the unit keeps it and its ratio is None,
    and the report shows it in the table."""
    import multiprocessing as mp

    from benchmarks.gpu import parts, report
    from benchmarks.gpu.plan import make_plan

    def oom(plan: Any, opts: Any) -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(parts.PARTS, "router", oom)
    plan = make_plan(True, "cpu", 1)
    receive, send = mp.Pipe(duplex=False)
    parts.child_main("router", plan, {"batch": plan.router_batch, "checkpointing": False}, send)
    rec = receive.recv()
    assert rec == {"oom": True, "batch": 4, "error": "out of memory at batch 4"}
    on = {"median_ms": 2.0, "samples_per_s": 2000.0, "peak_memory_bytes": 2**20, "memory_kind": "cuda max allocated",
          "checkpointing": True}
    unit = _bench().combine("router_checkpointing", {"plain": rec, "checkpointed": on})
    assert unit["ratio_peak_memory"] is None and unit["ratio_ms"] is None
    md = "\n".join(report.router_section(plan, unit, {"tiny": "tiny"}))
    assert "| off | out of memory at batch 4 |" in md and "| on | 0.00 | 2.0 |" in md
