"""`clipforge demo --quick`: the whole pipeline at toy budgets, and the report's structure."""

from __future__ import annotations

import json
import re
import time

from clipforge.cli import main


def test_quick_demo_writes_the_whole_report(tmp_path, capsys):
    out, anc = tmp_path / "demo", tmp_path / "ancestry"
    t = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out), "--ancestry", str(anc)]) == 0
    first = time.perf_counter() - t
    printed = capsys.readouterr().out
    assert "no cached ancestry" in printed and "about" in printed and "left in all" in printed

    demo = json.loads((out / "demo.json").read_text())
    assert set(demo["phases_s"]) == {"ancestry", "clip_moe", "learngene", "descendants", "composed", "evaluate",
                                     "report"}
    names = set(demo["models"])
    assert {"ancestry", "CLIP-MoE"} <= names
    for prefix in ("MM-LG clip", "MM-LG vision", "MM-LG text", "CLIP-MoE of MM-LG"):
        assert any(n.startswith(prefix) for n in names), prefix

    md = (out / "report.md").read_text()
    for section in ("## The family", "## What each model sees", "## Size against quality", "## Inside the CLIP-MoE",
                    "## Sample retrievals", "## Training curves", "## Wall time per phase"):
        assert section in md, section
    for name in names:  # every model has its row in the family table
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.M), name
    for png in ("tradeoff", "routing", "experts_mmvp", "retrievals", "curves"):
        assert f"plots/{png}.png" in md and (out / "plots" / f"{png}.png").stat().st_size > 2000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table" in html

    # a rerun reuses every phase
    t = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out), "--ancestry", str(anc)]) == 0
    assert time.perf_counter() - t < first
