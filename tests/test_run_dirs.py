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
from clipforge.files import write_json
from clipforge.run import read_claim

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


@pytest.mark.slow
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
    assert rerun.returncode == 0 and "already finished" in out
    assert _snapshot(tmp_path / "cut") == before


def test_train_refuses_another_kind_of_run_and_other_settings(tmp_path, capsys):
    dmu = tmp_path / "dmu"
    write_json(dmu / "settings.json", {"kind": "moe dmu", "settings": {"method": "dmu"}, "status": "running"})
    (dmu / "dmu.json").write_text("{}")
    first = tmp_path / "t"
    assert main([*TRAIN, "--steps", "2", "--out", str(first), "--log-every", "1"]) == 0
    lines = [json.loads(x) for x in (first / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and 0 <= lines[0]["elapsed_s"] <= lines[1]["elapsed_s"]
    for out, extra, what in ((dmu, ["--steps", "2"], "`moe dmu` run"),
                             (first, ["--steps", "3", "--log-every", "1"], "train.steps")):
        before = _snapshot(out)
        capsys.readouterr()
        assert main([*TRAIN, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clipforge: error: ") and "\n" not in err and what in err and "--overwrite" in err
        assert _snapshot(out) == before
    assert main([*TRAIN, "--steps", "3", "--out", str(first), "--log-every", "1", "--overwrite"]) == 0
    assert read_claim(first)["settings"]["train"]["steps"] == 3
    assert main([*TRAIN, "--steps", "2", "--out", str(dmu), "--overwrite"]) == 0
    assert read_claim(dmu)["kind"] == "train" and not (dmu / "dmu.json").exists()


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


# --- one Run for every command: overwrite keeps the old run until the new one finishes; one lock ------

def test_overwrite_then_a_failing_run_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "0.png").write_bytes(b"not a png")
    rows = "".join(f"imgs/0.png,a caption {i}\n" for i in range(16))
    (tmp_path / "bad.csv").write_text("image,caption\n" + rows)
    capsys.readouterr()
    code = main(["train", "--model", "tiny", "--data", str(tmp_path / "bad.csv"), "--on-error", "raise",
                 "--batch-size", "8", "--workers", "0", "--steps", "2", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip()
    errors = [x for x in err.splitlines() if "error" in x]  # (the progress bar shares stderr)
    assert code == 2 and len(errors) == 1 and "0.png" in errors[0] and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".run.*")), "the aside, staging or lock was left behind"


@pytest.mark.slow
def test_a_second_process_on_a_live_out_is_refused_and_steps_are_logged_once(tmp_path):
    argv = [*TRAIN, "--steps", "5000", "--log-every", "1", "--out", str(tmp_path / "run")]
    first = _run(argv)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text()):
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before a second could start"
    second = _run(argv)
    _, err = second.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1 and "in use by another clipforge process" in lines[0], err
    assert f"pid {first.pid}" in lines[0]
    first.send_signal(signal.SIGINT)  # enough: the second is refused; stop the first where it is
    assert first.wait(timeout=120) == 130
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip()]
    assert len(steps) > 0 and steps == list(range(1, len(steps) + 1))  # each step once, none twice


def test_build_is_made_once_and_overwrite_replaces_only_on_success(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["build", "tiny", "--out", str(out)]) == 0
    snap = _snapshot(out)
    capsys.readouterr()
    assert main(["build", "tiny", "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out and _snapshot(out) == snap
    assert main(["build", "tiny", "--seed", "1", "--out", str(out)]) == 2  # other settings: refused
    assert "seed" in capsys.readouterr().err and _snapshot(out) == snap
    assert main(["build", "tiny", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert read_claim(out)["settings"]["seed"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_interrupted_overwrite_is_put_back_and_stale_temp_files_go(tmp_path):
    """A kill inside an --overwrite leaves the old run aside and a partial new one: the next start restores it."""
    from clipforge.run import Run

    out = tmp_path / "run"
    with Run(out, "train", {"a": 1}) as run:
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text("{}")
        run.finish()
    os.replace(out, tmp_path / ".run.aside-999999")  # as a killed overwrite left it
    write_json(out / "settings.json", {"kind": "train", "settings": {"a": 2}, "status": "running"})
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".step_2.pt.abcd1234.tmp.pt").write_bytes(b"half")
    (tmp_path / ".run.tmp-zz9yy8xx").mkdir()
    (tmp_path / ".run.lock").write_text('{"pid": 999999}')  # a lock file whose process is gone
    with Run(out, "train", {"a": 1}) as run:
        assert run.done
    assert (out / "model" / "config.json").is_file() and not (out / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_fresh_run_leaves_nothing_and_a_resumable_one_stays(tmp_path):
    from clipforge.errors import ClipforgeError
    from clipforge.run import Run

    with pytest.raises(ClipforgeError), Run(tmp_path / "a", "train", {}):
        raise ClipforgeError("late bad input")
    assert not (tmp_path / "a").exists()
    with pytest.raises(KeyboardInterrupt), Run(tmp_path / "b", "train", {}):
        (tmp_path / "b" / "checkpoints").mkdir()
        (tmp_path / "b" / "checkpoints" / "step_1.pt").write_bytes(b"x")
        raise KeyboardInterrupt
    with Run(tmp_path / "b", "train", {}) as run:
        assert run.resumed and not run.done
