"""`clipforge <command>`: the command-line front of the library.

Each command lives in its own module with `add_parser(subparsers)` and `run(args) -> int`. `main(argv)`
is callable from tests. User errors (`ClipforgeError`) print one line and exit with status 2.
Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from ..errors import ClipforgeError

# command name → module under clipforge.cli (imported lazily so `clipforge --help` stays fast)
COMMANDS: dict[str, str] = {
    "build": "models",
    "import": "models",
    "info": "models",
    "stretch": "models",
    "ancestry": "train",
    "train": "train",
    "eval": "train",
    "demo": "demo",
    "learngene": "learngene",
    "moe": "moe",
    "export": "export",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line on stderr naming the flag, exit status 2.
    (Subcommand parsers are built from the same class.)"""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"clipforge: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clipforge",
        description="Grow (CLIP-MoE) and shrink (MM-LG learngenes) pretrained CLIP models.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"clipforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_name in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        importlib.import_module(f"{__name__}.{mod_name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        code = int(args.func(args) or 0)
        # stderr, so `--json` output on stdout stays machine-readable
        print(f"clipforge {_command_name(args)}: done in {_duration(time.perf_counter() - start)}", file=sys.stderr)
        return code
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (missing, permissions, disk full): it names the path
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipforge: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command] + [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join(parts)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
