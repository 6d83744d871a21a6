"""Flags every writing or data-reading command shares, defined once: `--workers` and `--overwrite`."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

WORKERS_HELP = ("DataLoader worker processes per rank that decode and preprocess images, for training, "
                "embedding and evaluation (default: the machine's cores per rank minus one, at most 8; "
                "0 = in the main process)")


def add_workers_flag(p: argparse.ArgumentParser, *aliases: str, dest: str = "workers") -> None:
    p.add_argument("--workers", *aliases, dest=dest, type=int, default=None, metavar="N", help=WORKERS_HELP)


OVERWRITE_HELP = ("replace what OUT holds (another run, other settings, files this command did not make) instead "
                  "of refusing; the old contents are kept aside until the new run finishes, and put back if it fails")


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    """`--overwrite` (alias `--force`): the one way to replace what `--out` holds (`clipforge.run.Run`)."""
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true", help=OVERWRITE_HELP)


def with_workers(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with its `--workers` as the process default for every DataLoader it builds (the
    configs keep 0, so result records do not change with the worker count)."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from ..data.loader import default_workers

        with default_workers(getattr(args, "workers", None)):
            return run(args)

    return wrapped
