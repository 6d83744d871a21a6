"""`clipforge learngene extract|descend`, the pipelines behind them, and the FLOPs/time helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

pytest.importorskip("clipforge.data.scenes")

from helpers import unequal_spec  # noqa: E402

from clipforge.cli import main  # noqa: E402
from clipforge.cost import Timer, flops_per_sample, train_flops  # noqa: E402
from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.files import portable_path  # noqa: E402
from clipforge.learngene.pipeline import parse_shape, shape_name  # noqa: E402
from clipforge.models.io import save  # noqa: E402
from clipforge.models.registry import build, make_config  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: the whole command on tiny models

EXTRACT = ["--steps", "3", "--batch-size", "8", "--data", "scenes", "--eval-scenes", "16", "--eval-fashion", "16"]


@pytest.fixture(scope="module")
def ancestry(tmp_path_factory) -> Path:
    """A tiny CLIP whose towers differ in width and depth (vision 3 × 48, text 2 × 32), saved as a stand-in
    ancestry (training it would add nothing here)."""
    path = tmp_path_factory.mktemp("anc") / "model"
    save(build(unequal_spec(), seed=0), path, provenance={"source": "test stand-in ancestry"})
    return path


@pytest.fixture(scope="module")
def learngene(ancestry, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lg")
    assert main(["learngene", "extract", "--ancestry", str(ancestry), "--out", str(out), *EXTRACT]) == 0
    return out


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_extract_writes_learngene_with_parameter_count_and_rerun_skips(ancestry, learngene, capsys):
    lg_dir = learngene / "learngene"
    meta = json.loads((lg_dir / "learngene.json").read_text())
    assert meta["num_parameters"] > 0 and (lg_dir / "learngene.safetensors").is_file()
    prov = meta["provenance"]
    assert prov["steps"] == 3 and prov["kd"] == {"alpha": 1.0, "beta": 0.0, "tau": 1.0, "feature": "cosine",
                                                 "tie_temperature": False}
    assert prov["init"] == "lstsq"  # the default when the shapes allow
    q = prov["auxnet_quality"]
    assert set(q) >= {"step0", "final", "ancestry", "curve"} and "zeroshot_acc1" in q["final"]
    assert prov["flops"]["total"] > 0 and prov["wall_time_s"] >= 0
    assert prov["ancestry"] == portable_path(ancestry.resolve())
    assert not (learngene / "extract" / "checkpoints").exists()  # freed once the learngene is saved

    before = _mtimes(learngene)
    capsys.readouterr()
    assert main(["learngene", "extract", "--ancestry", str(ancestry), "--out", str(learngene), *EXTRACT]) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and f"{meta['num_parameters']:,} parameters" in out and "Aux-Net at step 0" in out
    assert _mtimes(learngene) == before
    # Other settings in the same place: refused, not mixed.
    assert main(["learngene", "extract", "--ancestry", str(ancestry), "--out", str(learngene), "--steps", "4",
                 *EXTRACT[2:]]) == 2


def test_descend_every_modality_to_plain_hf_dirs_and_rerun_skips(learngene, tmp_path, capsys):
    out = tmp_path / "family"
    args = ["learngene", "descend", "--learngene", str(learngene), "--out", str(out),
            "--shape", "clip:1x32:2x16", "--shape", "vision:3", "--shape", "text:1x16"]
    assert main(args) == 0
    for name, cls in (("clip-v1w32-t2w16", CLIPModel), ("vision-v3", CLIPVisionModelWithProjection),
                      ("text-t1w16", CLIPTextModelWithProjection)):
        model = cls.from_pretrained(out / name)  # plain transformers, no clipforge code
        assert type(model) is cls
    clip = CLIPModel.from_pretrained(out / "clip-v1w32-t2w16")
    v, t = clip.config.vision_config, clip.config.text_config
    assert (v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.intermediate_size) == (1, 32, 2, 64)
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.intermediate_size) == (2, 16, 1, 32)
    prov = json.loads((out / "vision-v3" / "clipforge.json").read_text())
    assert prov["source"] == portable_path((learngene / "learngene").resolve()) and "rule" in prov

    before = _mtimes(out)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 3
    assert _mtimes(out) == before


@pytest.mark.parametrize("shape, culprit", [
    ("clip:4:2", "vision depth 4 is deeper than the ancestry's vision tower (3 blocks)"),
    ("text:3", "text depth 3 is deeper"),
    ("vision:2x64", "vision width 64 is wider than the learngene's vision blocks (48"),
    ("clip:2x40:2x16", "vision width 40 is not a multiple of the head size 16"),
    ("text:0", "depths and widths >= 1"),
    ("vision:2x0", "depths and widths >= 1"),
    ("clip:2x32", "give both"),
])
def test_a_bad_shape_gets_one_line_and_writes_nothing(learngene, tmp_path, capsys, shape, culprit):
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["learngene", "descend", "--learngene", str(learngene), "--out", str(out), "--shape", "vision:1",
                 "--shape", shape]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert not out.exists()


def test_descend_with_short_pretraining_of_each_modality(learngene, tmp_path):
    out = tmp_path / "pre"
    assert main(["learngene", "descend", "--learngene", str(learngene / "learngene"), "--out", str(out),
                 "--shape", "clip:2", "--shape", "vision:1", "--shape", "text:2", "--pretrain-steps", "2",
                 "--batch-size", "4", "--data", "scenes"]) == 0
    for name in ("clip-v2-t2", "vision-v1", "text-t2"):
        pre = json.loads((out / name / "clipforge.json").read_text())["pretrain"]
        assert pre["steps"] == 2 and pre["samples_seen"] == 8 and pre["train_flops"] > 0
        assert not (out / "_runs" / name / "checkpoints").exists()
    objectives = {n: json.loads((out / n / "clipforge.json").read_text())["pretrain"]["objective"]
                  for n in ("clip-v2-t2", "vision-v1")}
    assert objectives == {"clip-v2-t2": "infonce", "vision-v1": "infonce vs frozen partner tower"}


@pytest.mark.parametrize("flags, culprit", [
    (["--width-vision", "64"], "learngene vision width 64 is wider than the ancestry's vision tower (48)"),
    (["--width-text", "24"], "learngene text width 24 is not a multiple of the head size 16"),
    (["--width-text", "0"], "learngene text width must be >= 1"),
])
def test_a_bad_learngene_width_gets_one_line(ancestry, tmp_path, capsys, flags, culprit):
    out = tmp_path / "lg"
    capsys.readouterr()
    assert main(["learngene", "extract", "--ancestry", str(ancestry), "--out", str(out), *EXTRACT, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert not out.exists()


def test_a_narrower_projected_learngene_extracts_and_descends(ancestry, tmp_path):
    out = tmp_path / "narrow"
    assert main(["learngene", "extract", "--ancestry", str(ancestry), "--out", str(out), *EXTRACT,
                 "--construction", "project", "--width-vision", "32", "--width-text", "16"]) == 0
    cfg = json.loads((out / "learngene" / "learngene.json").read_text())["config"]
    assert (cfg["vision_width"], cfg["vision_heads"], cfg["text_width"], cfg["text_heads"]) == (32, 2, 16, 1)
    assert cfg["construction"] == "project" and (cfg["max_depth_vision"], cfg["max_depth_text"]) == (3, 2)
    assert main(["learngene", "descend", "--learngene", str(out), "--out", str(tmp_path / "fam"),
                 "--shape", "clip:2:1", "--shape", "vision:3x16"]) == 0
    v = CLIPModel.from_pretrained(tmp_path / "fam" / "clip-v2-t1").config.vision_config
    assert (v.hidden_size, v.num_hidden_layers) == (32, 2)
    assert CLIPVisionModelWithProjection.from_pretrained(tmp_path / "fam" / "vision-v3w16").config.hidden_size == 16


def test_parse_shape():
    assert parse_shape("clip:4:2") == ("clip", 4, 2, None, None)
    assert parse_shape("clip:3") == ("clip", 3, 3, None, None)
    assert parse_shape("vision:6") == ("vision", 6, None, None, None)
    assert parse_shape("text:2") == ("text", None, 2, None, None)
    assert parse_shape("clip:4x96:4x64") == ("clip", 4, 4, 96, 64)
    assert parse_shape("clip:4x96:2") == ("clip", 4, 2, 96, None)
    assert parse_shape("vision:6x96") == ("vision", 6, None, 96, None)
    assert parse_shape("text:2x64") == ("text", None, 2, None, 64)
    names = [shape_name(parse_shape(s)) for s in ("clip:4:2", "vision:6", "text:2", "clip:4x96:4x64", "text:2x64")]
    assert names == ["clip-v4-t2", "vision-v6", "text-t2", "clip-v4w96-t4w64", "text-t2w64"]
    assert shape_name(("clip", 4, 2)) == "clip-v4-t2"  # the tuple form callers used before widths
    for bad in ("clip", "vision:0", "text:1:2", "audio:3", "clip:a:b", "vision:2x", "vision:x4", "clip:2x64",
                "text:2x0", "clip:1:2:3"):
        with pytest.raises(ClipforgeError):
            parse_shape(bad)


def test_flops_per_sample_by_hand():
    cfg = make_config("tiny")  # width 32, MLP 64, 2 blocks; 32 px, patch 8 → 16 patches + CLS; context 16
    d, m, blocks = 32, 64, 2
    t = 17
    image = 2 * 3 * 8 * 8 * d * 16 + blocks * (2 * (4 * d * d + 2 * d * m) * t + 4 * t * t * d) + 2 * d * 32
    assert flops_per_sample(cfg, "image") == image == 829_696
    text = blocks * (2 * (4 * d * d + 2 * d * m) * 16 + 4 * 16 * 16 * d) + 2 * d * 32
    assert flops_per_sample(cfg, "text") == text
    assert flops_per_sample(cfg, "text", tokens=5) < text
    assert flops_per_sample(build("tiny"), "clip") == image + text  # a model works as well as its config
    assert flops_per_sample(cfg.vision_config, "image") == image  # so does a tower config
    assert train_flops(100, 10) == 3000
    with pytest.raises(ValueError):
        flops_per_sample(cfg, "audio")
    with Timer() as timer:
        torch.ones(1).sum()
    first = timer.seconds
    assert 0 <= first < 5 and timer.seconds == first  # frozen after exit


def test_extract_reads_a_users_columns(ancestry, tmp_path):
    from PIL import Image

    rows = ["picture,text"]
    for i, colour in enumerate(["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "lg"
    args = ["learngene", "extract", "--ancestry", str(ancestry), "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--eval-scenes", "0", "--data", str(tmp_path / "pairs.csv")]
    assert main([*args, "--image-key", "picture", "--caption-key", "text"]) == 0
    data = json.loads((out / "learngene" / "learngene.json").read_text())["provenance"]["data"]
    assert data["name"] == "pairs.csv" and data["bytes"] > 0  # identified by path, size and time
    assert main([*args[:5], str(tmp_path / "other"), *args[6:]]) == 2  # the default columns are not there
