"""Checkpoint cadence: by steps or by rank 0's wall clock (whichever first), two kept, resume unchanged."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from _train_worker import SyntheticPairs, resume_config, tiny_model

from clipforge.errors import ClipforgeError
from clipforge.schedule import TrainConfig, add_checkpoint_flags
from clipforge.train import ClipLoss, ClipStep, train
from clipforge.train import cadence as cadence_module
from clipforge.train import loop as loop_module
from clipforge.train.cadence import Cadence
from clipforge.train.checkpoint import save_checkpoint


class FakeClock:
    """A wall clock that moves only when told (the training step moves it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Interrupted(Exception):
    pass


class TickingStep:
    """The default CLIP step, advancing the fake clock by `seconds[i]` at its i-th call (and failing at `fail_at`)."""

    def __init__(self, clock: FakeClock, seconds: list[float], fail_at: int | None = None) -> None:
        self.inner, self.clock, self.seconds, self.fail_at = ClipStep(ClipLoss()), clock, seconds, fail_at
        self.calls = 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted(f"killed in step call {self.calls}")
        self.clock.t += self.seconds[self.calls - 1]
        return self.inner(model, batch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(cadence_module, "now", fake)
    return fake


@pytest.fixture
def saves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The steps the loop writes checkpoints at, in order."""
    steps: list[int] = []
    real = loop_module.save_checkpoint

    def recording(state: dict[str, Any], ckpt_dir: Any, step: int, keep: int = 2) -> Any:
        steps.append(step)
        return real(state, ckpt_dir, step, keep=keep)

    monkeypatch.setattr(loop_module, "save_checkpoint", recording)
    return steps


def _files(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_defaults_are_wall_cadence_and_two_kept():
    cfg = TrainConfig()
    assert (cfg.save_every, cfg.save_every_s, cfg.keep_checkpoints) == (None, 1800.0, 2)
    for bad in ({"save_every": -1}, {"save_every_s": -5.0}, {"save_every_s": float("nan")},
                {"save_every_s": float("inf")}):
        with pytest.raises(ClipforgeError, match="save_every"):
            TrainConfig(**bad)


def test_two_kept_and_a_killed_writers_temporary_file_removed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".step_3.pt.x1y2.tmp.pt").write_bytes(b"half a checkpoint")
    for step in range(1, 6):
        save_checkpoint({"step": step}, ckpts, step)
    assert _files(tmp_path) == ["latest", "step_4.pt", "step_5.pt"]


def test_checkpoint_flags():
    p = argparse.ArgumentParser()
    add_checkpoint_flags(p)
    args = p.parse_args([])
    assert (args.save_every, args.save_every_s) == (None, 1800.0)
    args = p.parse_args(["--save-every", "50", "--save-every-s", "600"])
    assert (args.save_every, args.save_every_s) == (50, 600.0)
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            p.parse_args(["--save-every-s", bad])


def test_short_run_with_defaults_saves_only_at_the_end(tmp_path, saves):
    train(tiny_model(), SyntheticPairs(), resume_config(save_every=None), tmp_path, progress=False)
    assert saves == [12]
    assert _files(tmp_path) == ["latest", "step_12.pt"]


def test_wall_cadence_counts_from_the_last_checkpoint(tmp_path, clock, saves):
    # 3 s a step, every 10 s: due at 12 s (step 4), then 12 s after that write (step 8), and the end.
    cfg = resume_config(save_every=None, save_every_s=10.0)
    train(tiny_model(), SyntheticPairs(), cfg, tmp_path, step_fn=TickingStep(clock, [3.0] * 12), progress=False)
    assert saves == [4, 8, 12]
    assert _files(tmp_path) == ["latest", "step_12.pt", "step_8.pt"]  # the latest and its predecessor


def test_the_earlier_cadence_wins(tmp_path, clock, saves):
    # Wall (10 s) first at step 3; steps (5) first at step 8; wall again at step 10; the end at 12.
    seconds = [4.0] * 3 + [1.0] * 5 + [6.0] * 4
    cfg = resume_config(save_every=5, save_every_s=10.0)
    train(tiny_model(), SyntheticPairs(), cfg, tmp_path, step_fn=TickingStep(clock, seconds), progress=False)
    assert saves == [3, 8, 10, 12]
    assert _files(tmp_path) == ["latest", "step_10.pt", "step_12.pt"]


def test_save_every_zero_never_checkpoints(tmp_path, clock, saves):
    cfg = resume_config(save_every=0, save_every_s=1.0)
    train(tiny_model(), SyntheticPairs(), cfg, tmp_path, step_fn=TickingStep(clock, [3.0] * 12), progress=False)
    assert saves == [] and not (tmp_path / "checkpoints").exists()
    assert not Cadence(None, None, 12).enabled and not Cadence(None, 0.0, 12).enabled


def test_resume_after_a_wall_checkpoint_is_bit_identical(tmp_path, clock, saves):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    cfg = resume_config(save_every=None, save_every_s=10.0)
    model_a = train(tiny_model(dropout=0.1), SyntheticPairs(), cfg, out_a,
                    step_fn=TickingStep(clock, [3.0] * 12), progress=False)

    saves.clear()
    with pytest.raises(Interrupted):  # dies in step 6, after the wall-time checkpoint of step 4
        train(tiny_model(dropout=0.1), SyntheticPairs(), cfg, out_b,
              step_fn=TickingStep(clock, [3.0] * 12, fail_at=6), progress=False)
    assert saves == [4]
    # Resumed with another cadence (result-neutral): only when it saves changes, not what it computes.
    other = resume_config(save_every=5, save_every_s=None)
    model_b = train(tiny_model(dropout=0.1), SyntheticPairs(), other, out_b, resume="latest",
                    step_fn=TickingStep(clock, [3.0] * 8), progress=False)
    assert saves == [4, 9, 12]
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _ranks(clock: FakeClock, every_s: float, steps: int) -> tuple[Cadence, Cadence, list[Any], list[Any]]:
    """Rank 0 and rank 1 of a simulated two-rank job whose broadcast hands rank 1 what rank 0 sent."""
    sent: list[Any] = []
    got: list[Any] = []

    def from_rank0(obj: Any) -> Any:
        sent.append(obj)
        return obj

    def to_rank1(obj: Any) -> Any:
        assert obj is None  # rank 1 contributes nothing: rank 0's clock decides
        got.append(sent[len(got)])
        return got[-1]

    r0 = Cadence(None, every_s, steps, world_size=2, is_main=True, broadcast=from_rank0)
    r1 = Cadence(None, every_s, steps, world_size=2, is_main=False, broadcast=to_rank1)
    return r0, r1, sent, got


def test_ddp_ranks_follow_rank0s_clock_without_a_collective_per_step(clock):
    steps = 250
    r0, r1, sent, got = _ranks(clock, 100.0, steps)
    t0 = clock.t
    r0.start(0)
    clock.t = -1e9  # rank 1's clock is nowhere near rank 0's
    r1.start(0)
    saved = []
    for step in range(1, steps + 1):
        clock.t = t0 + step  # rank 0: 1 s a step
        d0 = r0.due(step, False)
        if d0:
            r0.saved(step)
        clock.t = -1e9 - 7 * step
        d1 = r1.due(step, False)
        if d1:
            r1.saved(step)
        assert d0 == d1 and len(sent) == len(got), step  # the same decision, the same collectives
        if d0:
            saved.append(step)
    assert saved == [100, 200, 250]
    assert len(sent) < steps // 8  # about CHECKS_PER_INTERVAL checks per interval, not one per step


def test_ddp_plan_reads_the_clock_less_often_for_fast_steps(clock):
    r0, _, sent, _ = _ranks(clock, 100.0, 50_000)
    t0 = clock.t
    r0.start(0)
    first = None
    for step in range(1, 50_000):
        clock.t = t0 + 0.01 * step  # 10 ms steps: the interval is 10,000 steps
        if r0.due(step, False):
            first = step
            break
    assert first is not None and 10_000 <= first <= 10_010  # at the deadline, give or take a step
    assert len(sent) <= 2 * cadence_module.CHECKS_PER_INTERVAL


def test_world_size_one_never_broadcasts(clock):
    def no_collective(obj: Any) -> Any:
        raise AssertionError("a collective at world size 1")

    c = Cadence(None, 10.0, 100, world_size=1, broadcast=no_collective)
    c.start(0)
    due = []
    for step in range(1, 30):
        clock.t += 4.0
        if c.due(step, False):
            c.saved(step)
            due.append(step)
    assert due == [3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert Cadence(5, None, 100).due(5, False) and not Cadence(5, None, 100).due(4, False)
    assert Cadence(None, 10.0, 100).due(100, False) and Cadence(None, 10.0, 100).due(7, True)


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of a real two-rank run: rank 0's clock moves 3 s a step, rank 1's never moves."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        clock = FakeClock()
        cadence_module.now = clock  # this process only
        decided: list[int] = []
        due = Cadence.due

        def recording(self: Cadence, step: int, stopped: bool) -> bool:
            answer = due(self, step, stopped)
            if answer:
                decided.append(step)
            return answer

        Cadence.due = recording  # type: ignore[method-assign]
        cfg = resume_config(save_every=None, save_every_s=10.0)
        train(tiny_model(), SyntheticPairs(), cfg, out_dir,
              step_fn=TickingStep(clock, [3.0 if rank == 0 else 0.0] * 12), progress=False)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(decided))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_checkpoint_together_on_rank0s_clock(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    decided = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert decided == [[4, 8, 12], [4, 8, 12]]  # rank 1's frozen clock alone would never have saved
    assert _files(tmp_path) == ["latest", "step_12.pt", "step_8.pt"]
