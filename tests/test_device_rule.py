"""One device rule for every command (`--device`), and `moe dmu`'s evaluation: the user's, said up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipforge import distributed as D
from clipforge.cli import build_parser, main
from clipforge.cli._workers import resolve_device
from clipforge.errors import ClipforgeError
from clipforge.models.io import save
from clipforge.models.registry import build

MODEL_COMMANDS = [["train"], ["eval"], ["ancestry"], ["demo"], ["moe", "dmu"], ["moe", "stage"], ["moe", "route"],
                  ["moe", "baseline", "direct-ft"], ["moe", "stats"], ["learngene", "extract"],
                  ["learngene", "descend"]]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_command_that_runs_a_model_takes_device(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    assert "--device" in capsys.readouterr().out


def test_preferred_device_is_what_training_and_clustering_see(monkeypatch):
    assert D.dist_info().device == D.default_device()
    with D.preferred_device("cpu"):
        assert D.dist_info().device == torch.device("cpu")
    # cuda without an index is this rank's GPU (torchrun's LOCAL_RANK); an explicit index is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with D.preferred_device("cuda"):
        assert D.dist_info().device == torch.device("cuda", 1)
    with D.preferred_device(torch.device("cuda", 0)):
        assert D.default_device() == torch.device("cuda", 0)
    with D.preferred_device("auto"):
        assert D.default_device() == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.default_device() == torch.device("cpu")


def test_resolve_device_refuses_what_is_not_here_in_one_line(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, says in (("tpu9", "not a device"), ("meta", "cpu or cuda"), ("cuda:7", "no such CUDA device")):
        with pytest.raises(ClipforgeError, match=says):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ClipforgeError, match="each rank takes its own GPU"):
        resolve_device("cuda:1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)


def test_a_bad_device_fails_before_a_training_command_writes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", "scenes", "--out", str(out), "--steps", "1",
                 "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:7" in err[0]
    assert not out.exists()


def _pairs(folder: Path, n: int = 12) -> Path:
    folder.mkdir()
    rows = ["picture,text"]
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    for i in range(n):
        c = colours[i % len(colours)]
        Image.new("RGB", (32, 32), c).save(folder / f"{i}.png")
        rows.append(f"{i}.png,a {c} square number {i}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "model"
    save(build("tiny", seed=0), path, provenance={"source": "test base"})
    return path


DMU = ["--preset", "quick", "--stage-steps", "2", "--router-steps", "2", "--stage-batch", "4", "--router-batch", "4",
       "--image-key", "picture", "--caption-key", "text", "--workers", "0", "--device", "cpu", "--amp", "off"]


@pytest.mark.slow
def test_dmu_on_user_data_evaluates_on_the_held_out_data_given(tiny_base, tmp_path, capsys):
    train, held = _pairs(tmp_path / "train", 16), _pairs(tmp_path / "held", 8)
    out = tmp_path / "dmu"
    assert main(["moe", "dmu", "--base", str(tiny_base), "--data", str(train), "--eval-data", str(held),
                 "--out", str(out), *DMU]) == 0
    said = capsys.readouterr().out
    assert f"evaluation: the base and the CLIP-MoE on {held} (8 held-out samples)" in said
    result = json.loads((out / "eval.json").read_text())
    assert result["suite"] == {"data": str(held.resolve()), "size": 8}
    for name in ("base", "clip_moe"):
        metrics = result["models"][name]["metrics"]
        assert set(metrics) == {"retrieval"}  # the user's pairs only: no built-in task
        assert 0 <= result["models"][name]["headline"]["t2i_r1"] <= 1
    assert result["routing"] and (out / "plots" / "routing.png").is_file()


@pytest.mark.slow
def test_dmu_on_user_data_without_held_out_data_says_evaluation_is_off(tiny_base, tmp_path, capsys):
    train = _pairs(tmp_path / "train", 16)
    out = tmp_path / "dmu"
    assert main(["moe", "dmu", "--base", str(tiny_base), "--data", str(train), "--out", str(out), *DMU]) == 0
    said = capsys.readouterr().out
    assert "evaluation: off: the training data are your own; pass --eval-data" in said
    assert not (out / "eval.json").exists() and (out / "model" / "config.json").is_file()


def test_a_missing_optional_dataset_is_a_notice_at_the_start(monkeypatch):
    from clipforge.data import classification
    from clipforge.eval.suite import SuiteConfig, available_tasks

    def missing(self, *a, **k):
        raise ClipforgeError("Fashion-MNIST is missing (/nowhere not found)")

    monkeypatch.setattr(classification.FashionMNIST, "__init__", missing)
    suite, notices = available_tasks(SuiteConfig.quick())
    assert "fashion_mnist" not in suite.tasks and "scenes_retrieval" in suite.tasks
    assert len(notices) == 1 and "leaves out Fashion-MNIST" in notices[0]
