"""Non-finite values and full disks: one line naming the step, flag or directory; nothing non-finite is saved."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _train_worker import SyntheticPairs, tiny_model

from clipforge.cli import main
from clipforge.errors import ClipforgeError
from clipforge.files import atomic_path
from clipforge.moe.clusters import kmeans, stage_labels
from clipforge.train import ClipLoss, ClipStep, TrainConfig, train
from clipforge.train.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint, step_files

TRAIN = ["train", "--model", "tiny", "--data", "scenes", "--steps", "6", "--batch-size", "8", "--workers", "0"]


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`main(argv)`'s exit status and its `clipforge: error:` lines (tqdm's progress bar also writes to stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("clipforge: error: ")]


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)
    floats = [t for t in _tensors(state) if t.is_floating_point()]
    assert floats
    return all(bool(t.isfinite().all()) for t in floats)


# -- a real divergence through the CLI ---------------------------------------------------------------------

def test_diverging_train_exits_2_naming_step_and_lr(tmp_path, capsys):
    out = tmp_path / "run"
    # lr 1e6 (3e4 after the first warm-up steps) turns the tiny model's loss into nan by step 4.
    code, errors = _run([*TRAIN, "--lr", "1e6", "--log-every", "2", "--save-every", "2", "--out", str(out)], capsys)
    assert code == 2
    assert len(errors) == 1, errors
    line = errors[0]
    assert "step 4" in line and "nan" in line and "1e+06" in line and "--lr" in line, line
    assert not (out / "model").exists()
    # The loss was still finite at step 2: that checkpoint is written, finite, named, and `latest`.
    ckpts = step_files(out / CHECKPOINT_DIR)
    assert sorted(ckpts) == [2], ckpts
    assert "step_2.pt" in line
    assert all(_all_finite(p) for p in ckpts.values())
    assert latest_checkpoint(out / CHECKPOINT_DIR) == ckpts[2]


# -- non-finite flags, refused by argparse -------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-inf"),
                                        ("--weight-decay", "nan"), ("--label-smoothing", "inf"),
                                        ("--fixed-logit-scale", "nan"), ("--lr", "fast"), ("--warmup", "nan")])
def test_nonfinite_flag_refused_at_parse_time(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    code, errors = _run([*TRAIN, flag, value, "--out", str(out)], capsys)
    assert code == 2
    # "argument --lr: ...": argparse's own wording, so the value never reached the run.
    assert len(errors) == 1 and f"argument {flag}" in errors[0], errors
    assert not out.exists()


def test_nonfinite_schedule_refused_in_the_library():
    with pytest.raises(ClipforgeError, match="weight_decay must be finite"):
        TrainConfig(weight_decay=float("nan"))


# -- the parameter check before a checkpoint and at the end ------------------------------------------------

class _PoisonAt:
    """A finite loss that touches only `text_projection`; at call `at` it sets a weight the loss never sees to nan.

    Only the parameter check can notice: every logged loss stays finite."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        self.calls += 1
        if self.calls == self.at:
            with torch.no_grad():
                model.visual_projection.weight[0, 0] = float("nan")
        return model.text_projection.weight.square().mean(), {}


def test_nan_parameter_is_caught_before_the_checkpoint(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-3, log_every=1, save_every=2)
    with pytest.raises(ClipforgeError) as caught:
        train(tiny_model(), SyntheticPairs(16), cfg, tmp_path, step_fn=_PoisonAt(3), progress=False)
    line = str(caught.value)
    assert "\n" not in line
    assert "between step 2 and step 4" in line and "visual_projection.weight" in line and "step_2.pt" in line, line
    ckpts = step_files(tmp_path / CHECKPOINT_DIR)
    assert sorted(ckpts) == [2] and _all_finite(ckpts[2])


def test_nan_parameter_is_caught_at_the_end(tmp_path):
    # No log lines, no checkpoints: only the end-of-training check stands between nan and the caller.
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, log_every=0, save_every=0)
    with pytest.raises(ClipforgeError, match="between step 0 and step 3.*no finite checkpoint"):
        train(tiny_model(), SyntheticPairs(16), cfg, tmp_path, step_fn=_PoisonAt(2), progress=False)
    assert not step_files(tmp_path / CHECKPOINT_DIR)


def test_finite_training_passes_the_checks(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=3, save_every=2)
    train(tiny_model(), SyntheticPairs(16), cfg, tmp_path, step_fn=ClipStep(ClipLoss()), progress=False)
    assert sorted(step_files(tmp_path / CHECKPOINT_DIR)) == [2, 4]


# -- a full disk -------------------------------------------------------------------------------------------

def _fail_second_checkpoint(monkeypatch, error: BaseException) -> None:
    real_save = torch.save
    calls = []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if Path(f).parent.name == CHECKPOINT_DIR:
            calls.append(f)
            if len(calls) == 2:
                raise error
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr("clipforge.train.checkpoint.torch.save", save)


def test_disk_full_during_train_gets_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _fail_second_checkpoint(monkeypatch, RuntimeError(
        "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: "
        "file write failed"))
    real_usage = shutil.disk_usage
    monkeypatch.setattr("clipforge.train.checkpoint.shutil.disk_usage",
                        lambda p: real_usage(p)._replace(free=0))
    code, errors = _run([*TRAIN, "--lr", "1e-3", "--log-every", "2", "--save-every", "2", "--out", str(out)], capsys)
    assert code == 2
    assert len(errors) == 1, errors
    assert str(out / CHECKPOINT_DIR) in errors[0] and "no space left" in errors[0], errors
    assert "step_2.pt is kept" in errors[0]
    assert not (out / "model").exists()
    ckpt_dir = out / CHECKPOINT_DIR
    assert sorted(step_files(ckpt_dir)) == [2]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step_2.pt"
    assert load_checkpoint(latest_checkpoint(ckpt_dir))["step"] == 2


def test_enospc_oserror_during_checkpoint(tmp_path, monkeypatch):
    _fail_second_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=0, save_every=2)
    with pytest.raises(ClipforgeError, match="no space left") as caught:
        train(tiny_model(), SyntheticPairs(16), cfg, tmp_path, progress=False)
    assert str(tmp_path / CHECKPOINT_DIR) in str(caught.value)
    assert load_checkpoint(latest_checkpoint(tmp_path / CHECKPOINT_DIR))["step"] == 2


def test_other_write_failure_is_not_called_a_full_disk(tmp_path, monkeypatch):
    _fail_second_checkpoint(monkeypatch, RuntimeError("PytorchStreamWriter failed writing file data/0\nsecond line"))
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=0, save_every=2)
    with pytest.raises(ClipforgeError) as caught:
        train(tiny_model(), SyntheticPairs(16), cfg, tmp_path, progress=False)
    line = str(caught.value)
    assert "no space" not in line and "PytorchStreamWriter failed writing file data/0" in line
    assert "\n" not in line and "second line" not in line


def test_atomic_path_enospc_names_the_destination(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_text("old")
    with pytest.raises(ClipforgeError, match="no space left on device") as caught, atomic_path(dest) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(dest) in str(caught.value)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_path_other_oserror_unchanged(tmp_path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "Permission denied")


# -- k-means on non-finite embeddings ----------------------------------------------------------------------

def test_kmeans_refuses_nonfinite_rows():
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ClipforgeError) as caught:
        kmeans(x, 3)
    line = str(caught.value)
    assert "\n" not in line and "2 of 20" in line and "non-finite weights" in line, line
    images = np.nan_to_num(x, nan=0.0, posinf=0.0)
    texts = images.copy()
    texts[5] = np.nan
    with pytest.raises(ClipforgeError, match="1 of 20 text embedding rows"):
        stage_labels(images, texts, 2, 2)
