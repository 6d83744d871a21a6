"""The `--workers` flag, one definition for every command that loads data."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

WORKERS_HELP = ("DataLoader worker processes per rank that decode and preprocess images, for training, "
                "embedding and evaluation (default: the machine's cores per rank minus one, at most 8; "
                "0 = in the main process)")


def add_workers_flag(p: argparse.ArgumentParser, *aliases: str, dest: str = "workers") -> None:
    p.add_argument("--workers", *aliases, dest=dest, type=int, default=None, metavar="N", help=WORKERS_HELP)


def with_workers(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with its `--workers` as the process default for every DataLoader it builds (the
    configs keep 0, so result records do not change with the worker count)."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from ..data.loader import default_workers

        with default_workers(getattr(args, "workers", None)):
            return run(args)

    return wrapped
