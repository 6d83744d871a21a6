"""The training loop: learning, freezing, gradients, checkpointing, and bit-identical resumption."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_worker import SyntheticPairs, resume_config, tiny_model

from clipforge.errors import ClipforgeError
from clipforge.train import (
    ClipLoss,
    ClipStep,
    ResumableSampler,
    TrainConfig,
    enable_grad_checkpointing,
    param_groups,
    train,
)

TESTS_DIR = Path(__file__).parent


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_and_logs(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=16, lr=1e-3, weight_decay=0.1, warmup=3, log_every=5)
    train(tiny_model(), SyntheticPairs(), cfg, tmp_path, progress=False)
    rows = _log(tmp_path)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {"step", "loss", "lr", "logit_scale", "samples_per_s"} <= set(rows[0])
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_frozen_params_stay_bit_identical(tmp_path):
    model = tiny_model()
    before = _snapshot(model)
    cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, frozen=["*.mlp.*"], log_every=0)
    train(model, SyntheticPairs(), cfg, tmp_path, progress=False)
    after = model.state_dict()
    frozen = [k for k in before if ".mlp." in k]
    assert frozen
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["text_projection.weight"], after["text_projection.weight"])
    assert not torch.equal(before["logit_scale"], after["logit_scale"])


def test_fixed_logit_scale_is_frozen(tmp_path):
    model = tiny_model()
    cfg = TrainConfig(steps=2, batch_size=16, fixed_logit_scale=100.0, log_every=1)
    train(model, SyntheticPairs(), cfg, tmp_path, progress=False)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-6)
    assert _log(tmp_path)[-1]["logit_scale"] == pytest.approx(100.0, rel=1e-5)


def test_patterns_validated():
    model = tiny_model()
    with pytest.raises(ClipforgeError, match=r"\*nothing\*"):
        param_groups(model, trainable=["*nothing*"])
    groups = param_groups(model, trainable=["text_model.*"], frozen=["*.mlp.*"], weight_decay=0.2)
    names = [n for g in groups for n in g["param_names"]]
    assert names and all(n.startswith("text_model.") and ".mlp." not in n for n in names)
    assert model.logit_scale.requires_grad is False
    decayed = next(g for g in groups if g["weight_decay"] == 0.2)["param_names"]
    assert not any(n.endswith("bias") or "norm" in n or "embedding" in n for n in decayed)


def _batch(n: int = 8):
    ds = SyntheticPairs(n)
    return {"pixel_values": ds.pixel_values, "input_ids": ds.input_ids}


def test_clip_step_reaches_every_parameter():
    model = tiny_model().train()
    loss, _ = ClipStep(ClipLoss())(model, _batch())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_grad_checkpointing_matches(tmp_path):
    results = []
    for ckpt in (False, True):
        model = tiny_model(dropout=0.1).train()
        if ckpt:
            enable_grad_checkpointing(model)
        torch.manual_seed(5)
        loss, _ = ClipStep(ClipLoss())(model, _batch())
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0, l1, rtol=0, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=0, atol=1e-6, msg=n)


def test_sampler_ranks_and_resume():
    world = [ResumableSampler(20, seed=1, rank=r, world_size=2, batch_size_per_rank=3) for r in range(2)]
    batches = [list(s) for s in world]
    assert len(batches[0]) == len(world[0]) == 3
    for b0, b1 in zip(*batches):
        assert not set(b0) & set(b1)
    flat = [i for pair in zip(*batches) for b in pair for i in b]
    assert len(set(flat)) == len(flat) == 18
    assert world[0].state_dict() == {"epoch": 1, "position": 0}
    # Stopping after one batch and resuming from the state yields the remaining batches.
    a = ResumableSampler(20, seed=1, batch_size_per_rank=4)
    it = iter(a)
    first = next(it)
    b = ResumableSampler(20, seed=1, batch_size_per_rank=4)
    b.load_state_dict(a.state_dict())
    assert [first] + list(b) == list(ResumableSampler(20, seed=1, batch_size_per_rank=4))
    assert list(b) != list(ResumableSampler(20, seed=1, batch_size_per_rank=4))  # epoch 1 reshuffles


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="clipforge.train"):
        train(tiny_model(), SyntheticPairs(), resume_config(steps=2, save_every=0), tmp_path, resume="latest",
              progress=False)
    assert "starting fresh" in caplog.text
    assert [r["step"] for r in _log(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    model_a = train(tiny_model(dropout=0.1), SyntheticPairs(), resume_config(), out_a, progress=False)

    # Checkpoints: the last two kept, a `latest` pointer, loadable with the safe unpickler.
    ckpts = out_a / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_12.pt", "step_9.pt"]
    assert (ckpts / "latest").read_text().strip() == "step_12.pt"
    state = torch.load(ckpts / "step_12.pt", weights_only=True)
    assert state["step"] == 12 and set(state) >= {"model", "optimizer", "scheduler", "sampler", "rng"}

    code = (f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import _train_worker; "
            f"_train_worker.main([{str(out_b)!r}, '{torch.get_num_threads()}', '7'])")
    with open(tmp_path / "worker.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=err, stderr=subprocess.STDOUT)
        pointer = out_b / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        try:
            while not (pointer.is_file() and pointer.read_text().strip() == "step_6.pt"):
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, "worker never wrote its step-6 checkpoint"
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    model_b = train(tiny_model(dropout=0.1), SyntheticPairs(), resume_config(), out_b, resume="latest",
                    progress=False)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # The log reads as one run: steps 1..12 once each, the same losses as the uninterrupted run.
    rows_a, rows_b = _log(out_a), _log(out_b)
    assert [r["step"] for r in rows_b] == list(range(1, 13))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_decay_on_every_tensor_when_exclusions_are_off():
    """The released CLIP-MoE code decays every trainable tensor; clipforge spares biases, norms, embeddings."""
    from clipforge.models.registry import build
    from clipforge.train.optim import param_groups

    model = build("tiny", seed=0)
    spared = param_groups(model, weight_decay=0.1)
    every = param_groups(model, weight_decay=0.1, decay_exclusions=False)
    assert len(spared) == 2 and spared[1]["weight_decay"] == 0.0
    assert len(every) == 1 and every[0]["weight_decay"] == 0.1
    assert len(every[0]["params"]) == sum(len(g["params"]) for g in spared)
