"""Both methods on a CLIP shaped exactly as the hub publishes ViT-B/32, measured command by command.

    python -m benchmarks.realshape.run [--quick] [--work DIR] [--out DIR] [--threads N] [--workers N] [--note TEXT]

Units, each a `clipforge` command in its own process (peak RSS, wall and CPU time, disk at the end and at its
sampled peak; training time per step from the run's log.jsonl), each skipped on a rerun once its record exists:

  inputs           a ViT-B/32-shaped CLIP (random, seeded) in the hub's layout and a CSV of PNG image-text pairs
  dmu              clipforge moe dmu on it: 3 MCL stages + routers, a few steps each, no evaluation
  route, route-gc  clipforge moe route on its CLIP-MoE at a larger batch, without / with --grad-checkpointing
  extract-select   clipforge learngene extract --construction select (a few steps, no evaluation)
  extract-project  clipforge learngene extract --construction project
  descend-select   clipforge learngene descend: a narrower CLIP, vision and text tower, and a shallower CLIP
  descend-project  the same shapes from the project learngene
  checks           every output loaded in plain transformers (a process that never imports clipforge) and
                   in clipforge: the embeddings of fixed inputs compared; parameters counted

Then parameter tables counted on the meta device (ViT-B/32 and ViT-L/14: descendants beside the ancestry at the
same depth, a 4-expert top-2 CLIP-MoE stored / active, learngenes stored). `--quick`: the same on a tiny CLIP
whose towers differ in width and depth (tests/test_bench_realshape.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipforge.cost import Timer
from clipforge.errors import ClipforgeError

from .. import harness
from . import params as P
from .measure import DISK_EVERY, brief, code_state, disk_bytes, run_measured, step_times

NAME = "realshape"
# `moe route` again at a larger batch, without and with --grad-checkpointing: there activations, not weights,
# set the peak. Outside `Plan` (the units' key), so adding these units left the other records valid.
ROUTE_BATCH = {"full": 32, "quick": 8}
TOLERANCE = 1e-5  # max |Δ| of an embedding, plain transformers vs clipforge, for the check to pass
REFERENCE, REFERENCE_LABEL = "ViT-L-14", "ViT-L/14"  # the larger shape whose parameters are counted (on meta)


def _registry(name: str) -> dict[str, Any]:
    from clipforge.models.registry import get_config_dict

    spec = get_config_dict(name)
    spec.pop("description", None)
    return spec


def unequal_spec() -> dict[str, Any]:
    """A tiny CLIP whose towers differ in width and depth (vision 3 blocks × 48 wide, 3 heads; text 2 × 32, 2 heads;
    heads 16 wide), as `tests/helpers.py::unequal_spec` builds it."""
    spec = copy.deepcopy(_registry("tiny"))
    spec["vision_config"].update(hidden_size=48, num_attention_heads=3, intermediate_size=96, num_hidden_layers=3)
    return spec


@dataclass
class Plan:
    """What the benchmark runs: the architecture, the data and each command's budget."""

    arch: str
    spec: dict[str, Any]
    seed: int = 0
    pairs: int = 64
    image_px: int = 224
    batch: int = 8
    experts: int = 4
    top_k: int = 2
    stage_steps: int = 2
    router_steps: int = 2
    extract_steps: int = 4
    shapes: list[str] = field(default_factory=list)
    check_inputs: int = 4

    @classmethod
    def full(cls) -> Plan:
        return cls("ViT-B/32", _registry("ViT-B-32"),
                   shapes=["clip:6x512:6x384", "vision:6x512", "text:6x384", "clip:4:4"])

    @classmethod
    def quick(cls) -> Plan:
        return cls("tiny, towers 3x48 / 2x32", unequal_spec(), pairs=32, image_px=40, extract_steps=2,
                   shapes=["clip:2x32:1x16", "vision:2x32", "text:2x16", "clip:2:1"])


class Bench:
    """The work directory, the unit records and how each command is run."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args, self.plan = args, plan
        self.work = harness.work_dir(args, NAME)
        settings = {"plan": asdict(plan), "threads": args.threads, "workers": args.workers}
        harness.claim_work(self.work, NAME, settings, args.overwrite)
        self.units = harness.Units(self.work / "units", settings)
        self.hub, self.data = self.work / "hub", self.work / "data"

    def path(self, name: str) -> Path:
        return self.work / name

    def unit(self, name: str, fn) -> dict[str, Any]:
        """The record of unit `name`: reused if it exists, else made by `fn()` and written."""
        rec = self.units.get(name)
        if rec is not None:
            self.units.reused.add(name)
            print(f"[realshape] {name}: from its record ({self.units.path(name)})", flush=True)
            return rec
        print(f"[realshape] {name} ...", flush=True)
        rec = self.units.put(name, {**fn(), "code": code_state(), "date": time.strftime("%Y-%m-%d %H:%M")})
        print(f"[realshape] {name}: {brief(rec)}", flush=True)
        return rec

    def command(self, name: str, args: list[str], outputs: list[Path]) -> dict[str, Any]:
        """`clipforge ARGS` measured; what it writes starts from nothing (a unit is measured whole)."""
        for out in outputs:
            shutil.rmtree(out, ignore_errors=True)
        workers = [] if self.args.workers is None else ["--workers", str(self.args.workers)]
        return run_measured([*args, *workers], outputs, self.work / "logs" / f"{name}.log", self.args.threads)

    # --- the units ---------------------------------------------------------------------------------------

    def inputs(self) -> dict[str, Any]:
        from .hub import write_hub_dir, write_user_data

        p = self.plan
        for d in (self.hub, self.data):
            shutil.rmtree(d, ignore_errors=True)
        with Timer() as t:
            hub = write_hub_dir(p.spec, self.hub, p.seed)
            data = write_user_data(self.data, p.pairs, p.image_px, seed=1)
        return {"hub": hub, "data": data, "wall_s": round(t.seconds, 2), "hub_disk_bytes": disk_bytes(self.hub),
                "data_disk_bytes": disk_bytes(self.data)}

    def dmu(self) -> dict[str, Any]:
        p, out = self.plan, self.path("dmu")
        args = ["moe", "dmu", "--model", str(self.hub), "--data", str(self.data / "train.csv"), "--out", str(out),
                "--experts", str(p.experts), "--top-k", str(p.top_k), "--stage-steps", str(p.stage_steps),
                "--stage-batch-size", str(p.batch), "--router-steps", str(p.router_steps),
                "--router-batch-size", str(p.batch), "--seed", str(p.seed), "--no-eval"]
        rec = self.command("dmu", args, [out])
        phases = {f"stage{j}": step_times(out / "mcl" / f"stage{j}" / "train" / "log.jsonl")
                  for j in range(1, p.experts)}
        phases["routers"] = step_times(out / "log.jsonl")
        rec["phases"] = phases
        rec["steps"] = sum(ph["steps"] for ph in phases.values())
        rec["train_s"] = sum(ph["train_s"] for ph in phases.values())
        rec["s_per_step"] = rec["train_s"] / rec["steps"]
        rec["phase_wall_s"] = {k: v.get("wall_time_s") for k, v in
                               json.loads((out / "dmu.json").read_text())["phases"].items()}
        rec["parts_disk_bytes"] = {part: disk_bytes(out / part) for part in ("mcl", "packed", "model")}
        said = (self.work / "logs" / "dmu.log").read_text(errors="replace").splitlines()
        rec["disk_need_said"] = next((line.strip() for line in said if line.startswith("[dmu] disk:")), None)
        rec["model"] = str(out / "model")
        return rec

    def route(self, checkpointing: bool) -> dict[str, Any]:
        """`moe route` on the DMU run's CLIP-MoE at `ROUTE_BATCH`: its peak RSS with and without activation
        checkpointing (router training back-propagates through every block to reach the routers)."""
        p, name = self.plan, "route-gc" if checkpointing else "route"
        out, batch = self.path(name), ROUTE_BATCH["quick" if self.args.quick else "full"]
        args = ["moe", "route", "--model", str(self.path("dmu") / "model"), "--data", str(self.data / "train.csv"),
                "--out", str(out), "--router-steps", str(p.router_steps), "--router-batch-size", str(batch),
                "--seed", str(p.seed), *(["--grad-checkpointing"] if checkpointing else [])]
        rec = self.command(name, args, [out])
        rec.update(step_times(out / "log.jsonl") or {})
        rec["batch"] = batch
        return rec

    def extract(self, construction: str) -> dict[str, Any]:
        p, out = self.plan, self.path(f"extract-{construction}")
        args = ["learngene", "extract", "--model", str(self.hub), "--data", str(self.data / "train.csv"),
                "--out", str(out), "--construction", construction, "--steps", str(p.extract_steps),
                "--batch-size", str(p.batch), "--seed", str(p.seed), "--eval-scenes", "0", "--eval-fashion", "0"]
        rec = self.command(f"extract-{construction}", args, [out])
        rec.update(step_times(out / "extract" / "log.jsonl") or {})
        meta = json.loads((out / "learngene" / "learngene.json").read_text())
        rec["learngene_parameters"] = meta["num_parameters"]
        prov = meta.get("provenance", {})
        rec["init_fit_relative_residual"] = (prov.get("init_fit") or {}).get("relative_residual")
        rec["extraction_wall_s"] = prov.get("wall_time_s")  # the training part, as the learngene records it
        rec["train_flops"] = (prov.get("flops") or {}).get("total")
        rec["learngene_disk_bytes"] = disk_bytes(out / "learngene")
        rec["learngene"] = str(out / "learngene")
        return rec

    def descend(self, construction: str) -> dict[str, Any]:
        from clipforge.learngene.pipeline import parse_shape, shape_name

        out = self.path(f"descend-{construction}")
        args = ["learngene", "descend", "--learngene", str(self.path(f"extract-{construction}")), "--out", str(out)]
        for s in self.plan.shapes:
            args += ["--shape", s]
        rec = self.command(f"descend-{construction}", args, [out])
        rec["descendants"] = [{"shape": s, "kind": parse_shape(s).kind, "dir": str(out / shape_name(parse_shape(s))),
                               "disk_bytes": disk_bytes(out / shape_name(parse_shape(s)))} for s in self.plan.shapes]
        return rec

    def checks(self, made: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Every output in plain transformers (its own process, no clipforge) and in clipforge, same inputs."""
        models = [("hub", "clip", str(self.hub)), ("dmu", "moe", made["dmu"]["model"])]
        for c in ("select", "project"):
            models += [(f"{c}/{Path(d['dir']).name}", d["kind"], d["dir"]) for d in made[f"descend-{c}"]["descendants"]]
        cdir = self.path("checks")
        shutil.rmtree(cdir, ignore_errors=True)
        cdir.mkdir(parents=True)
        jobs = []
        for i, (label, kind, d) in enumerate(models):
            inputs = cdir / f"{i:02d}.inputs.safetensors"
            write_inputs(Path(d), inputs, self.data, self.plan.check_inputs, seed=i)
            jobs.append({"label": label, "dir": d, "kind": kind, "inputs": str(inputs),
                         "output": str(cdir / f"{i:02d}.plain.safetensors")})
        spec_path = cdir / "jobs.json"
        spec_path.write_text(json.dumps({"jobs": jobs}, indent=1))
        plain = run_plain(spec_path, self.work / "logs" / "checks-plain.log", self.args.threads)
        answer = json.loads(spec_path.read_text())
        rows = [compare(job, res) for job, res in zip(jobs, answer["results"], strict=True)]
        return {"plain_process": plain, "clipforge_imported_in_plain_process": answer["clipforge_imported"],
                "transformers": answer["transformers"], "tolerance": TOLERANCE, "models": rows,
                "max_abs_diff": max(max(r["max_abs_diff"].values()) for r in rows),
                "all_pass": all(r["pass"] for r in rows) and not answer["clipforge_imported"]}


# --- the checks -----------------------------------------------------------------------------------------


def write_inputs(model_dir: Path, path: Path, data: Path, n: int, seed: int) -> None:
    """Fixed inputs for the model in `model_dir`: seeded pixels at its image size, the CSV's first captions
    tokenized at its text context."""
    import csv

    import torch
    from safetensors.torch import save_file

    from clipforge.models.tokenizer import tokenize

    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = {}
    vision = cfg.get("vision_config") or (cfg if "image_size" in cfg else None)
    text = cfg.get("text_config") or (cfg if "max_position_embeddings" in cfg else None)
    if vision is not None:
        g = torch.Generator().manual_seed(seed)
        size = vision["image_size"]
        tensors["pixel_values"] = torch.randn(n, vision.get("num_channels", 3), size, size, generator=g)
    if text is not None:
        with open(data / "train.csv", newline="") as fh:
            captions = [row["caption"] for _, row in zip(range(n), csv.DictReader(fh))]
        tensors["input_ids"] = tokenize(captions, text["max_position_embeddings"])
    save_file(tensors, str(path))


def run_plain(jobs: Path, log: Path, threads: int | None) -> dict[str, Any]:
    """benchmarks/realshape/plain.py on `jobs` in a fresh, isolated interpreter (no clipforge import)."""
    import os
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # -I: the script's folder is not put on sys.path, so nothing of the benchmark can be imported by accident.
    cmd = [sys.executable, "-I", str(Path(__file__).with_name("plain.py")), str(jobs)]
    with open(log, "w") as fh, Timer() as t:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the plain-transformers check exited with {proc.returncode}; the end of {log}:\n{tail}")
    return {"argv": ["python", "-I", "benchmarks/realshape/plain.py", "JOBS.json"], "wall_s": round(t.seconds, 2),
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def compare(job: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """clipforge's embeddings of the job's inputs beside plain transformers'; parameters per tower."""
    import gc

    import torch
    from safetensors.torch import load_file

    from clipforge.models.encode import image_features, text_features
    from clipforge.models.io import load
    from clipforge.models.params import count_params

    model = load(job["dir"])
    inputs, theirs = load_file(job["inputs"]), load_file(job["output"])
    ours = {}
    with torch.no_grad():
        if "pixel_values" in inputs:
            ours["image"] = image_features(model, inputs["pixel_values"])
        if "input_ids" in inputs:
            ours["text"] = text_features(model, inputs["input_ids"])
    diff = {k: (ours[k].float() - theirs[k]).abs().max().item() for k in ours}
    scale = {k: ours[k].abs().max().item() for k in ours}
    counts = P.moe_model_counts(model) if job["kind"] == "moe" else {"stored": count_params(model)}
    row = {"label": job["label"], "kind": job["kind"], "dir": job["dir"], "plain_class": plain["class"],
           "plain_module": plain["module"], "clipforge_class": type(model).__name__,
           "plain_load_s": plain["load_s"], "plain_params": plain["params"], "params": counts,
           "image_processor": plain.get("image_processor"), "tokenizer": plain.get("tokenizer"),
           "max_abs_diff": diff, "max_abs_value": scale, "embedding_dim": {k: v.shape[-1] for k, v in ours.items()},
           "pass": all(v <= TOLERANCE for v in diff.values()) and plain["params"] == counts["stored"]["total"]}
    del model
    gc.collect()
    return row


# --- assembly -------------------------------------------------------------------------------------------


def amp_auto() -> str:
    """What the commands' default `--amp auto` resolves to on this machine's CPU (bf16 or off)."""
    import torch

    from clipforge.train.fast import resolve_amp

    return resolve_amp("auto", torch.device("cpu"))


def parameter_tables(plan: Plan, made: dict[str, dict[str, Any]], checks: dict[str, Any]) -> dict[str, Any]:
    """Meta-device counts for the measured architecture and for ViT-L/14 at the same relative shapes, and
    whether the measured outputs hold exactly the counted parameters."""
    ref = _registry(REFERENCE)
    ref_shapes = [P.relative_shape(s, plan.spec, ref) for s in plan.shapes]
    measured = P.table(plan.spec, plan.shapes, plan.experts, plan.top_k, P.narrow_widths(plan.shapes))
    reference = P.table(ref, ref_shapes, plan.experts, plan.top_k, P.narrow_widths(ref_shapes))
    # the counted figures against the outputs themselves
    by_label = {r["label"]: r for r in checks["models"]}
    agree = {"hub": by_label["hub"]["params"]["stored"] == measured["ancestry"],
             "dmu": by_label["dmu"]["params"] == {k: measured["moe"][k] for k in ("experts", "top_k", "stored",
                                                                                     "active")}}
    for c in ("select", "project"):
        agree[f"learngene-{c}"] = made[f"extract-{c}"]["learngene_parameters"] == \
            measured["learngenes"][f"{c}, full width"]["total"]
        for row in measured["descendants"]:
            got = by_label[f"{c}/{row['name']}"]["params"]["stored"]
            agree[f"{c}/{row['name']}"] = all(got[t] == v["params"] for t, v in row["towers"].items()) and \
                got["total"] == row["total"]
    return {"measured": {"arch": plan.arch, "shapes": list(plan.shapes), **measured},
            "reference": {"arch": REFERENCE_LABEL, "shapes": ref_shapes, **reference}, "counts_match_outputs": agree}


def run(args: argparse.Namespace) -> int:
    harness.set_threads(args.threads)
    plan = Plan.quick() if args.quick else Plan.full()
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M")
    machine = harness.machine(args.note)
    bench = Bench(args, plan)
    made: dict[str, dict[str, Any]] = {}
    made["inputs"] = bench.unit("inputs", bench.inputs)
    made["dmu"] = bench.unit("dmu", bench.dmu)
    for gc in (False, True):
        made["route-gc" if gc else "route"] = bench.unit("route-gc" if gc else "route", lambda gc=gc: bench.route(gc))
    for c in ("select", "project"):
        made[f"extract-{c}"] = bench.unit(f"extract-{c}", lambda c=c: bench.extract(c))
    for c in ("select", "project"):
        made[f"descend-{c}"] = bench.unit(f"descend-{c}", lambda c=c: bench.descend(c))
    checks = bench.unit("checks", lambda: bench.checks(made))
    results = {
        "command": args.command, "quick": bool(args.quick), "date": started, "machine": machine,
        "plan": asdict(plan), "threads": args.threads, "workers": args.workers, "amp_auto": amp_auto(),
        "code": code_state(),
        "units": made, "checks": checks, "parameters": parameter_tables(plan, made, checks),
        "units_reused": sorted(bench.units.reused), "wall_time_s": round(time.perf_counter() - t0, 1),
        "disk_every_s": DISK_EVERY,
    }
    out = harness.out_dir(args, NAME)
    from .report import render

    harness.write_results(out, results, render)
    print(f"[realshape] done in {results['wall_time_s'] / 60:.1f} min ({len(bench.units.reused)} units from "
          f"records): {out / 'results.md'}", flush=True)
    return 0 if checks["all_pass"] else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.realshape.run [flags]`; 0 on success, 1 if an embedding check failed, 2 on an error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = harness.parser(NAME, __doc__)
    harness.add_common(p, NAME, ancestry=False, threads="torch's (every core) in each command")
    p.add_argument("--workers", type=int, default=0,
                   help="--workers of every clipforge command (default 0: data loading in the measured process)")
    args = p.parse_args(argv)
    args.command = harness.command(NAME, argv)
    try:
        return run(args)
    except ClipforgeError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
