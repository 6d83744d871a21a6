"""Execution options (`train/options.py`): a command's --grad-checkpointing / --compile / --optimizer reach every
training run it starts and change how it runs, not what it computes."""

from __future__ import annotations

import pytest
import torch
from _train_worker import SyntheticPairs, resume_config, tiny_model

from clipforge.errors import ClipforgeError
from clipforge.moe.pack import upcycle
from clipforge.train import train
from clipforge.train.options import apply, execution


def test_execution_options_apply_inside_the_context_only():
    cfg = resume_config()
    with execution(grad_checkpointing=True, compile=None, optimizer="foreach") as active:
        assert active == {"grad_checkpointing": True, "optimizer": "foreach"}
        got = apply(cfg)
        assert got.grad_checkpointing and got.optimizer == "foreach" and got.compile == cfg.compile
    assert apply(cfg) == cfg
    with pytest.raises(ClipforgeError, match="optimizer"), execution(optimizer="sgd"):
        pass


@pytest.mark.parametrize("which", ["clip", "clip_moe"])
def test_gradient_checkpointing_from_the_command_gives_the_same_run(tmp_path, which):
    def model():
        base = tiny_model(seed=1)
        return upcycle(base, num_experts=2, top_k=1, seed=0) if which == "clip_moe" else base

    cfg = resume_config(steps=3, save_every=0)
    plain = train(model(), SyntheticPairs(24), cfg, tmp_path / "plain", progress=False)
    with execution(grad_checkpointing=True):
        recomputed = train(model(), SyntheticPairs(24), cfg, tmp_path / "ckpt", progress=False)
    for (name, a), b in zip(plain.state_dict().items(), recomputed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


TRAINING_COMMANDS = [["train"], ["moe", "dmu"], ["moe", "stage"], ["moe", "route"], ["moe", "baseline", "direct-ft"],
                     ["learngene", "extract"], ["learngene", "descend"]]


@pytest.mark.parametrize("command", TRAINING_COMMANDS, ids=" ".join)
def test_every_training_command_has_the_schedules_switches(command, capsys):
    from clipforge.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    usage = capsys.readouterr().out
    for flag in ("--amp {auto,bf16,fp16,off}", "--grad-checkpointing", "--compile", "--optimizer", "--save-every-s"):
        assert flag in usage, (command, flag)


def test_learngene_amp_reaches_the_schedule():
    from clipforge.cli import build_parser
    from clipforge.schedule import LEARNGENE_SCHEDULE, schedule_from_args

    args = build_parser().parse_args(["learngene", "extract", "--model", "m", "--data", "scenes", "--out", "o",
                                      "--amp", "off"])
    assert schedule_from_args(args, LEARNGENE_SCHEDULE).amp == "off"
