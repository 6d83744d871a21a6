"""`clipforge demo`: the main job on built-in data, from the ancestry to the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._workers import add_device_flag, add_overwrite_flag, with_workers


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole story on built-in data: ancestry → CLIP-MoE, MM-LG family → report",
        description="Train (or reuse) the ancestry CLIP, grow a CLIP-MoE by DMU, extract an MM-LG learngene and "
                    "descend a family (CLIP at three depths, vision-only, text-only), train the baselines each "
                    "verdict needs (direct fine-tuning, Scratch at equal FLOPs), measure every model on the same "
                    "tasks and write OUT/report.md and a "
                    "self-contained OUT/report.html. Resumable: rerun to continue. The first run also trains the "
                    "ancestry into the cache; later runs reuse it. The demo times this machine first and prints "
                    "its own estimate (measured wall times: docs/results.md).")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--cache", type=Path, help="cache directory for the trained ancestry, reused across runs "
                                              "(default $CLIPFORGE_CACHE, else $XDG_CACHE_HOME/clipforge or "
                                              "~/.cache/clipforge)")
    p.add_argument("--ancestry", type=Path, help="ancestry run directory (default CACHE/ancestry, "
                                                 "CACHE/ancestry-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the same pipeline at toy budgets (well under a minute)")
    p.add_argument("--compose", action="store_true",
                   help="also grow a CLIP-MoE from the middle MM-LG descendant (the two methods composed; "
                        "a few more minutes)")
    p.add_argument("--report-only", action="store_true",
                   help="write a finished demo's report again from its own records (after upgrading clipforge: "
                        "the same run under the new report and verdict rules); trains nothing")
    add_device_flag(p)
    add_overwrite_flag(p)
    p.set_defaults(func=run)


@with_workers
def run(args: argparse.Namespace) -> int:
    from ..demo.pipeline import DemoConfig, rewrite_report, run_demo
    from ..errors import ClipforgeError

    if args.report_only:
        md, html = rewrite_report(args.out)
        print(f"report: {html}\n        {md}")
        return 0

    cfg = DemoConfig.quick_config(compose=args.compose) if args.quick else DemoConfig(compose=args.compose)
    from ..demo.ancestry import ancestry_run_dir

    cfg.ancestry = str(args.ancestry or ancestry_run_dir(args.cache, quick=args.quick))
    parent = Path(cfg.ancestry).parent
    try:  # before anything is written: a cache that cannot exist fails here, not after OUT was made
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        flag = "--ancestry" if args.ancestry else "--cache"
        raise ClipforgeError(f"{flag}: cannot create the directory {parent} ({e.strerror})") from None
    result = run_demo(args.out, cfg, overwrite=args.overwrite)
    md, html = result["report"]
    print(f"report: {html}\n        {md}")
    return 0
