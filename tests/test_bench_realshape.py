"""`python -m benchmarks.realshape.run --quick`: every unit measured, every output equal in plain transformers."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "realshape" / "results"
UNITS = {"inputs", "dmu", "route", "route-gc", "extract-select", "extract-project", "descend-select",
         "descend-project", "checks"}
COMMANDS = ("dmu", "route", "route-gc", "extract-select", "extract-project", "descend-select", "descend-project")


def _bench() -> ModuleType:
    return importlib.import_module("benchmarks.realshape.run")


@pytest.mark.slow
def test_quick_run_measures_every_unit_and_the_embeddings_agree(tmp_path: Path) -> None:
    bench = _bench()
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--quick", "--out", str(out), "--work", str(work), "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
        results = json.loads((out / "results.json").read_text())
        # a rerun redoes nothing: every unit comes from its record
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it process-wide
    again = json.loads((out / "results.json").read_text())
    assert set(again["units_reused"]) == UNITS and again["units"] == results["units"]

    plan = results["plan"]
    assert results["command"].startswith("python -m benchmarks.realshape.run --quick")
    assert set(results["units"]) == UNITS - {"checks"} and results["units_reused"] == []
    for name in COMMANDS:
        u = results["units"][name]
        assert u["argv"][0] == "clipforge" and u["wall_s"] > 0 and u["peak_rss_bytes"] > 2**20, (name, u)
        assert u["disk_bytes"] > 0 and u["peak_disk_bytes"] >= u["disk_bytes"] > 0, (name, u)
    dmu = results["units"]["dmu"]
    assert dmu["steps"] == (plan["experts"] - 1) * plan["stage_steps"] + plan["router_steps"] and dmu["s_per_step"] > 0
    assert dmu["disk_need_said"].startswith("[dmu] disk: about")  # said before the run started
    for name in ("route", "route-gc"):  # router training at a larger batch, without and with checkpointing
        assert results["units"][name]["steps"] == plan["router_steps"] and results["units"][name]["batch"] == 8
    assert "--grad-checkpointing" in results["units"]["route-gc"]["argv"]
    assert "--grad-checkpointing" not in results["units"]["route"]["argv"]
    for c in ("select", "project"):
        assert results["units"][f"extract-{c}"]["steps"] == plan["extract_steps"]
        assert len(results["units"][f"descend-{c}"]["descendants"]) == len(plan["shapes"])

    checks = results["checks"]
    assert checks["all_pass"] and not checks["clipforge_imported_in_plain_process"]
    assert checks["max_abs_diff"] <= bench.TOLERANCE
    assert len(checks["models"]) == 2 + 2 * len(plan["shapes"])
    classes = {m["kind"]: m["plain_class"] for m in checks["models"]}
    assert classes == {"clip": "CLIPModel", "moe": "CLIPMoEModel", "vision": "CLIPVisionModelWithProjection",
                       "text": "CLIPTextModelWithProjection"}

    params = results["parameters"]
    assert all(params["counts_match_outputs"].values()), params["counts_match_outputs"]
    for table in (params["measured"], params["reference"]):
        assert table["moe"]["active"]["total"] < table["moe"]["stored"]["total"]
        for d in table["descendants"]:  # every descendant is smaller than the ancestry's towers
            assert all(v["ratio_full"] < 1 and v["ratio"] <= 1 for v in d["towers"].values()), d
            if "x" in d["shape"]:  # narrower: smaller than the ancestry even at the same depth
                assert all(v["ratio"] < 1 for v in d["towers"].values()), d
    md = (out / "results.md").read_text()
    assert md.startswith("`python -m benchmarks.realshape.run --quick") and "CLIPMoEModel" in md
    assert not list(out.glob(".*"))  # atomic writes leave no temp files behind


def test_hub_config_is_the_published_layout() -> None:
    """The ViT-B/32 config.json has the hub's legacy fields and loads as transformers reads it."""
    from transformers import CLIPConfig

    from benchmarks.realshape.hub import hub_config

    cfg = hub_config(_bench().Plan.full().spec)
    assert cfg["_name_or_path"] == "openai/clip-vit-base-patch32" and cfg["text_config_dict"] is None
    assert cfg["transformers_version"] is None and cfg["vision_config"]["transformers_version"] == "4.16.0.dev0"
    t, v = cfg["text_config"], cfg["vision_config"]
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["intermediate_size"]) == \
        (512, 12, 8, 2048)
    assert (v["hidden_size"], v["num_hidden_layers"], v["patch_size"], v["image_size"]) == (768, 12, 32, 224)
    assert (t["bos_token_id"], t["eos_token_id"], t["pad_token_id"]) == (0, 2, 1)
    loaded = CLIPConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    assert loaded.vision_config.hidden_size == 768 and loaded.text_config.eos_token_id == 2


def test_parameter_counts_on_meta() -> None:
    """Narrower descendants count fewer parameters than the ancestry at their depth; ViT-L/14 shapes carry over."""
    from benchmarks.realshape import params as P

    b32 = _bench().Plan.full()
    ref = _bench()._registry("ViT-L-14")
    assert [P.relative_shape(s, b32.spec, ref) for s in b32.shapes] == \
        ["clip:12x704:6x576", "vision:12x704", "text:6x576", "clip:8:4"]
    row = P.descendant_row(b32.spec, "vision:6x512")
    v = row["towers"]["vision"]
    assert (v["width"], v["heads"], v["mlp"]) == (512, 8, 2048) and v["ancestry_width"] == 768
    assert v["params"] < v["ancestry_same_depth"] < v["ancestry_full"] == 87_849_216
    moe = P.moe_counts(ref, 4, 2)
    assert moe["stored"]["total"] == 1_202_107_649 and moe["active"]["total"] == 685_870_337


def test_report_rebuilds_the_committed_results_md(tmp_path: Path) -> None:
    """`python -m benchmarks.realshape.report` writes the committed results.md again from its results.json."""
    from benchmarks.realshape import report

    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    assert report.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
