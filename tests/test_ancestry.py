"""`clipforge ancestry --quick`, `clipforge train` and `clipforge eval` end to end on built-in data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clipforge.cli import main

pytestmark = pytest.mark.slow  # end to end: the whole command on tiny models

pytest.importorskip("clipforge.data.scenes")

_HOLD_LOCK = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)")


def test_quick_ancestry_trains_evaluates_and_caches(tmp_path, capsys):
    out = tmp_path / "anc"
    assert main(["ancestry", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for which in ("trained", "random_init"):
        m = metrics[which]
        assert 0 <= m["fashion_mnist"]["acc1"] <= 1
        assert "image_retrieval_recall@1" in m["scenes_retrieval"]
        assert {"binding", "relation", "count"} <= set(m["mmvp"])
    assert (out / "plots" / "loss.png").stat().st_size > 1000
    assert (out / "model" / "config.json").is_file()
    prov = json.loads((out / "model" / "clipforge.json").read_text())
    assert prov["metrics"]["fashion_mnist"] == metrics["trained"]["fashion_mnist"]
    # what decides the bits the recipe trains to here (two machines' digests differ for these)
    assert set(prov["computed_with"]) == {"amp", "cpu_capability", "threads", "torch"}
    first = (out / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["ancestry", "--quick", "--out", str(out)]) == 0
    assert "reusing the cached ancestry" in capsys.readouterr().out
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == first
    # a finished cache is only read: reused while another process holds its lock (two benchmark shards)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out.with_name(f".{out.name}.lock"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["ancestry", "--quick", "--out", str(out)]) == 0
        assert "reusing the cached ancestry" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    # another recipe in the same place is refused, not silently mixed
    assert main(["ancestry", "--quick", "--steps", "5", "--out", str(out)]) == 2


def test_train_and_eval_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", "scenes", "--data", "fashion-mnist", "--steps", "4",
                 "--batch-size", "16", "--out", str(out), "--save-every", "2"]) == 0
    assert (out / "model" / "model.safetensors").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) >= 1
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "model"), "--task", "retrieval", "--limit", "32",
                 "--out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= res["metrics"]["image_retrieval_recall@1"] <= 1
