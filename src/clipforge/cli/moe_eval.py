"""`moe dmu`'s evaluation: the user's held-out data, the built-in suite for built-in data, or nothing, said
before the run starts (a missing optional dataset is a notice then, not a failure at the end) and run on
`--device` by rank 0 once every rank is done."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._workers import user_data_kwargs

BUILTIN = {"scenes", "fashion-mnist", "mnist"}


def eval_plan(args: argparse.Namespace, image_size: int) -> dict:
    """What `moe dmu` measures once finished: the user's held-out data (--eval-data), the built-in suite when
    the training data are built-in (less the tasks whose optional data are missing here), or nothing."""
    from ..eval.suite import SuiteConfig, available_tasks

    if args.no_eval:
        return {"on": False, "says": "off (--no-eval)"}
    if args.eval_data:
        from ..data import open_mixture

        test = open_mixture([args.eval_data], "test", image_size, **user_data_kwargs(args))
        return {"on": True, "test": test, "suite": SuiteConfig(),
                "says": f"the base and the CLIP-MoE on {args.eval_data} ({len(test):,} held-out samples)"}
    if not all(d.lower() in BUILTIN for d in args.data):
        return {"on": False, "says": "off: the training data are your own; pass --eval-data HELD_OUT to measure "
                                     "the CLIP-MoE against the base on held-out data of yours"}
    suite, notices = available_tasks(SuiteConfig.quick() if args.eval_size == "quick" else SuiteConfig())
    says = f"the built-in suite ({', '.join(suite.tasks)})" + "".join(f"\n[moe dmu] notice: {n}" for n in notices)
    return {"on": True, "test": None, "suite": suite, "says": says}


def evaluate_dmu(args: argparse.Namespace, base: Path, model_dir: Path, plan: dict) -> None:
    """The evaluation of a finished DMU run (`eval_plan`), on --device, recorded in its dmu.json."""
    import time

    from ..distributed import default_device
    from ..files import write_json
    from ..models import io
    from ..report.moe_run import evaluate_moe_run

    stages = json.loads((args.out / "mcl" / "mcl.json").read_text())["experts"]  # base first, as the run used them
    t = time.perf_counter()
    evaluate_moe_run(args.out, str(base), io.load(model_dir).to(default_device()), stages, plan["suite"],
                     test=plan["test"])
    manifest = json.loads((args.out / "dmu.json").read_text())
    manifest["phases"]["evaluation"] = {"wall_time_s": round(time.perf_counter() - t, 2),
                                        "results": str(args.out / "eval.json")}
    write_json(args.out / "dmu.json", manifest)
