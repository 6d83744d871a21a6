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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge",
        description="Grow (CLIP-MoE) and shrink (MM-LG learngenes) pretrained CLIP models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_name in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        importlib.import_module(f"{__name__}.{mod_name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipforge: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
