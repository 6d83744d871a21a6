"""One run-directory protocol: rerunning a command resumes it; other runs are refused; --overwrite replaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clipforge.cli import main
from clipforge.train.runs import claim, read_claim

TRAIN = ["train", "--model", "tiny", "--data", "scenes", "--batch-size", "8", "--save-every", "10",
         "--workers", "0", "--warmup", "5"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _default_sigint() -> None:
    # A suite started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the child must see SIGINT as a terminal user's run would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipforge", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_sigint_then_the_same_command_resumes_and_ends_equal(tmp_path):
    argv = [*TRAIN, "--steps", "300"]  # long enough that the SIGINT lands mid-run on a loaded machine
    whole = _run([*argv, "--out", str(tmp_path / "whole")])
    cut = _run([*argv, "--out", str(tmp_path / "cut")])
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(ckpts.glob("step_*")):
        time.sleep(0.02)
    assert cut.poll() is None, "the run ended before it could be interrupted"
    cut.send_signal(signal.SIGINT)
    _, err = cut.communicate(timeout=120)
    assert cut.returncode == 130, err
    assert "rerun the same command" in err and not (tmp_path / "cut" / "model").exists()
    again = _run([*argv, "--out", str(tmp_path / "cut")])
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming the interrupted run" in out
    assert whole.wait(timeout=300) == 0
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # a finished run rerun: nothing retrained, nothing rewritten
    before = _snapshot(tmp_path / "cut")
    rerun = _run([*argv, "--out", str(tmp_path / "cut")])
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "already trained" in out
    assert _snapshot(tmp_path / "cut") == before


def test_train_refuses_another_kind_of_run_and_other_settings(tmp_path, capsys):
    dmu = tmp_path / "dmu"
    claim(dmu, {"method": "dmu"}, kind="moe dmu")
    (dmu / "dmu.json").write_text("{}")
    first = tmp_path / "t"
    assert main([*TRAIN, "--steps", "2", "--out", str(first), "--log-every", "1"]) == 0
    lines = [json.loads(x) for x in (first / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and 0 <= lines[0]["elapsed_s"] <= lines[1]["elapsed_s"]
    for out, extra, what in ((dmu, ["--steps", "2"], "`moe dmu` run"), (first, ["--steps", "3", "--log-every", "1"], "train.steps")):
        before = _snapshot(out)
        capsys.readouterr()
        assert main([*TRAIN, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clipforge: error: ") and "\n" not in err and what in err and "--overwrite" in err
        assert _snapshot(out) == before
    assert main([*TRAIN, "--steps", "3", "--out", str(first), "--log-every", "1", "--overwrite"]) == 0
    assert read_claim(first)[1]["train"]["steps"] == 3
    assert main([*TRAIN, "--steps", "2", "--out", str(dmu), "--overwrite"]) == 0
    assert read_claim(dmu)[0] == "train" and not (dmu / "dmu.json").exists()


def test_a_directory_of_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "holds no clipforge run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("bad, flag", [(["--steps", "-5"], "--steps"), (["--batch-size", "100000"], "--batch-size"),
                                       (["--lr", "0"], "--lr")])
def test_refused_flags_write_nothing(tmp_path, capsys, bad, flag):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*TRAIN, "--steps", "2", *bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err and not out.exists()


def test_resume_of_a_pickled_file_is_refused_without_unpickling(tmp_path, capsys):
    import torch

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": Evil()}, tmp_path / "evil.pt")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*TRAIN, "--steps", "2", "--resume", str(tmp_path / "evil.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "evil.pt" in err and "\n" not in err and not out.exists() and not marker.exists()
    assert json.loads(json.dumps(err))  # one printable line
