"""Flags every writing or data-reading command shares, defined once: `--workers`, `--overwrite`, `--device`,
the user-data flags and the execution options of training commands (`--grad-checkpointing`, `--compile`,
`--optimizer`)."""

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


def add_user_data_flags(p: argparse.ArgumentParser) -> None:
    """How a user's files are read (one definition for every command that reads data)."""
    p.add_argument("--image-key", default="image", help="image column/field of user data (default image)")
    p.add_argument("--caption-key", default="caption", help="caption column/field of user data (default caption)")
    p.add_argument("--label-key", default=None,
                   help="class-label column/field of user data (names or integers), for zero-shot classification")
    p.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="a missing or corrupt image (or label): skip and count it (default) or stop")


def user_data_kwargs(args: argparse.Namespace) -> dict[str, str | None]:
    """The `open_mixture(**user_kw)` of `add_user_data_flags`."""
    return {"image_key": args.image_key, "caption_key": args.caption_key, "label_key": args.label_key,
            "on_error": args.on_error}


DEVICE_HELP = ("where models and their batches run, training, clustering and evaluation alike: auto (default: "
               "CUDA when available, else the CPU), cpu, cuda (under torchrun: each rank's own GPU), cuda:1")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def resolve_device(name: str | None):
    """The torch device `--device` names for this process (cuda without an index: this rank's GPU); one line
    when it is not there."""
    import torch

    from .. import distributed as D
    from ..errors import ClipforgeError

    if name in (None, "auto"):
        return D.default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ClipforgeError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise ClipforgeError(f"--device {name!r}: clipforge runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise ClipforgeError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)")
        if device.index is not None and D.dist_info().world_size > 1:
            raise ClipforgeError(f"--device {name}: under torchrun each rank takes its own GPU; pass --device cuda")
    with D.preferred_device(device):
        return D.default_device()


def add_execution_flags(p: argparse.ArgumentParser) -> None:
    """How the command's training runs execute (`clipforge.train.options`): memory and kernels, not results."""
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: exact, less memory (e.g. router training of a "
                        "large CLIP-MoE), about a third more time")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each training step (a CLIP-MoE uses its sync-free grouped dispatch)")
    p.add_argument("--optimizer", choices=["auto", "fused", "foreach", "for-loop"],
                   help="AdamW kernel (default auto: fused where torch has it)")
    from ..schedule import add_checkpoint_flags

    add_checkpoint_flags(p, defaults=False)


def with_workers(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with its `--workers` as the process default for every DataLoader it builds (the
    configs keep 0, so result records do not change with the worker count), its `--device` for every model it
    runs (`distributed.preferred_device`), and its execution options (`add_execution_flags`) for every
    training run it starts. None of them changes what the command computes, so none is in a run's settings."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from ..data.loader import default_workers
        from ..distributed import preferred_device
        from ..train.options import FIELDS, execution

        device = resolve_device(getattr(args, "device", None))  # a bad --device fails before any work
        with default_workers(getattr(args, "workers", None)), preferred_device(device), \
                execution(**{f: getattr(args, f, None) for f in FIELDS}):
            return run(args)

    return wrapped
