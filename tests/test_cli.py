"""The CLI's shape: every flag documented, one vocabulary for the input model and the batch size."""

from __future__ import annotations

import argparse

from clipforge.cli import build_parser


def _flags(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*prefix, name))
        elif action.option_strings and "-h" not in action.option_strings:
            yield " ".join(prefix), action


def test_every_flag_has_help_text():
    missing = [f"{cmd} {a.option_strings[0]}" for cmd, a in _flags(build_parser()) if not a.help]
    assert not missing, missing


def test_one_vocabulary_for_the_input_model_and_batch_size():
    flags = {}
    for cmd, a in _flags(build_parser()):
        flags.setdefault(cmd, set()).update(a.option_strings)
    for cmd in ("train", "moe dmu", "moe stage", "moe baseline", "learngene extract"):
        assert "--model" in flags[cmd], cmd
    for cmd in ("train", "moe baseline", "learngene extract"):
        assert "--batch-size" in flags[cmd] and "--steps" in flags[cmd] and "--lr" in flags[cmd], cmd
    # the old names still parse
    args = build_parser().parse_args(["moe", "dmu", "--base", "x", "--data", "scenes", "--out", "y"])
    assert str(args.base) == "x"
