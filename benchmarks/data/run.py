"""Data at scale: a disk-backed CSV of JPEG scenes against the in-memory built-in path, at 10k and 100k pairs.

    python -m benchmarks.data.run                      # generate (resumable) + measure; see README.md
    python -m benchmarks.data.run --sizes 2000 20000 --steps 6 --out /tmp/r   # a smaller run
    python -m benchmarks.data.run --quick              # smoke test (hundreds of pairs, one step), used by the tests

Per (size, path) one fresh single-thread process measures: the time from opening the data to the end of
the first training step, its peak RSS at that point, training throughput (samples/s of `train()`, steady
windows) and embedding throughput (`embed_dataset`) with 0 and 2 DataLoader workers. Results go to
`results.json` (every number, the machine, its load) and `results.md` (tables and verdicts) in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clipforge.files import atomic_path, write_text

from .. import harness
from .report import ARCH, IMAGE_SIZE, render, verdicts

NAME = "data"
ROOT = harness.BENCHMARKS.parent  # the children run `-m benchmarks.data.run` from here
CHUNK = 1000


# ------------------------------------------------------------------------------------------- generation


def _write_chunk(job: tuple[str, int, int]) -> int:
    """Render scenes [a, b) of the train split as JPEG files plus a chunk TSV of (path, caption)."""
    import torch

    torch.set_num_threads(1)
    from clipforge.data.scenes import ScenesDataset

    out, a, b = Path(job[0]), job[1], job[2]
    done = out / "chunks" / f"{a // CHUNK:04d}.tsv"
    if done.is_file():
        return 0
    ds = ScenesDataset(split="train", size=b, image_size=IMAGE_SIZE, seed=0)
    folder = out / "images" / f"{a // CHUNK:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(a, b):
        s = ds[i]
        rel = f"images/{a // CHUNK:04d}/{i:06d}.jpg"
        s.image.save(out / rel, "JPEG", quality=90)
        rows.append(f"{rel}\t{s.captions[0]}\n")
    write_text(done, "".join(rows))  # the chunk is finished only once its list exists (written atomically)
    return b - a


def generate(out: Path, n: int, sizes: list[int], procs: int) -> dict[str, Any]:
    """Write `n` scenes (resumable by chunks of 1,000) and one CSV per size (its first `size` rows)."""
    from multiprocessing import Pool

    (out / "chunks").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
    t = time.perf_counter()
    with Pool(procs) as pool:
        written = sum(pool.imap_unordered(_write_chunk, jobs))
    seconds = time.perf_counter() - t
    import csv

    for size in sizes:
        path = out / f"pairs-{size}.csv"
        if path.is_file():
            continue
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            for a in range(0, size, CHUNK):
                for line in (out / "chunks" / f"{a // CHUNK:04d}.tsv").read_text().splitlines()[: size - a]:
                    w.writerow(line.split("\t", 1))
    disk = sum(p.stat().st_size for p in (out / "images").rglob("*.jpg")) if written else None
    return {"images": n, "written_now": written, "seconds": round(seconds, 1), "processes": procs,
            "bytes": disk}


# ------------------------------------------------------------------------------------------- measurement


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Head:
    """The first `n` items of a dataset (its pass reports still reach the dataset)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One (path, size) unit in this fresh process."""
    t_import = time.perf_counter()
    import warnings

    import torch

    torch.set_num_threads(1)
    from clipforge.data.collate import Collator
    from clipforge.models.preprocess import transform_for
    from clipforge.models.registry import build
    from clipforge.moe.clusters import embed_dataset
    from clipforge.train.loop import TrainConfig, train

    warnings.simplefilter("ignore")
    model = build(ARCH, seed=0)
    collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)
    imported = time.perf_counter() - t_import
    rss_before = _rss_mb()

    t0 = time.perf_counter()
    if args.path == "disk":
        from clipforge.data.user import open_dataset

        ds = open_dataset(Path(args.work) / f"pairs-{args.size}.csv")
    else:
        from clipforge.data.cached import Cached
        from clipforge.data.scenes import ScenesDataset

        ds = Cached(ScenesDataset(split="train", size=args.size, image_size=IMAGE_SIZE, seed=0))
    opened = time.perf_counter() - t0
    run = Path(args.work) / "work" / f"{args.path}-{args.size}"
    cfg = dict(batch_size=args.batch, warmup=0, log_every=0, save_every=0, seed=0)
    train(model, ds, TrainConfig(steps=1, num_workers=0, **cfg), run / "first", collate_fn=collate, progress=False)
    first_step = time.perf_counter() - t0
    rss_first = _rss_mb()

    out = {"path": args.path, "size": args.size, "samples": len(ds), "import_and_build_s": round(imported, 2),
           "open_s": round(opened, 3), "first_step_s": round(first_step, 3), "rss_before_open_mb": round(rss_before, 1),
           "peak_rss_first_step_mb": round(rss_first, 1), "train": {}, "embed": {}}
    window = args.steps
    for w in args.workers:
        log_dir = run / f"train-w{w}"
        train(model, ds, TrainConfig(steps=3 * window, num_workers=w, **{**cfg, "log_every": window}), log_dir,
              collate_fn=collate, progress=False)
        rates = [json.loads(line)["samples_per_s"] for line in (log_dir / "log.jsonl").read_text().splitlines()]
        out["train"][str(w)] = {"samples_per_s": round(sum(rates[1:]) / len(rates[1:]), 2),
                                "windows": [round(r, 2) for r in rates]}  # window 1 includes worker start-up
        head = _Head(ds, args.embed)
        t = time.perf_counter()
        embed_dataset(model, head, batch_size=256, num_workers=w)
        out["embed"][str(w)] = {"samples": len(head), "samples_per_s": round(len(head) / (time.perf_counter() - t), 2)}
    out["peak_rss_end_mb"] = round(_rss_mb(), 1)
    out["peak_rss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return out


def _measure(args: argparse.Namespace, path: str, size: int) -> dict[str, Any]:
    """One unit in a fresh single-thread process: its own imports, allocations and peak RSS."""
    cmd = [sys.executable, "-m", "benchmarks.data.run", "--child", path, "--size", str(size),
           "--work", str(Path(args.work).resolve()), "--batch", str(args.batch), "--steps", str(args.steps),
           "--embed", str(args.embed), "--workers", *map(str, args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{path} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options: the common ones (no ancestry: a random-init model; no --threads: every measuring
    process is single-thread) and its own. Quick defaults in brackets."""
    harness.add_common(p, NAME, ancestry=False, overwrite=False, threads=None)
    p.add_argument("--sizes", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="pairs (10000 100000) [100 200]")
    p.add_argument("--batch", type=int, help="global batch (64) [8]")
    p.add_argument("--steps", type=int, help="steps per throughput window, 3 windows (8) [1]")
    p.add_argument("--embed", type=int, help="pairs per embedding measurement (1024) [16]")
    p.add_argument("--workers", type=int, nargs="+", help="DataLoader workers measured (0 2) [0]")
    p.add_argument("--gen-procs", type=int, help="processes writing the JPEGs (2) [1]")
    p.add_argument("--redo", nargs="*", choices=["disk", "memory"], default=None,
                   help="resume: reuse the units of an existing --out with the same settings except these paths")
    p.add_argument("--child", choices=["disk", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)


def _defaults(args: argparse.Namespace) -> None:
    """Fill the sizes the user left out: the full run's, or the smoke test's with --quick."""
    full = {"sizes": [10_000, 100_000], "batch": 64, "steps": 8, "embed": 1024, "workers": [0, 2], "gen_procs": 2}
    quick = {"sizes": [100, 200], "batch": 8, "steps": 1, "embed": 16, "workers": [0], "gen_procs": 1}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def measure_all(args: argparse.Namespace, res: dict[str, Any], reuse: dict[str, Any], out: Path) -> None:
    """Every (size, path) unit into `res["units"]`, reusing `reuse`'s unless --redo names the path."""
    for size in args.sizes:
        for path in ("disk", "memory"):
            if path not in (args.redo or []) and f"{path}/{size}" in reuse:
                res["units"][f"{path}/{size}"] = {**reuse[f"{path}/{size}"], "reused": True}
                print(f"[data bench] {path} {size:,}: reused from {out / 'results.json'}", flush=True)
                continue
            t = time.perf_counter()
            res["units"][f"{path}/{size}"] = u = _measure(args, path, size)
            print(f"[data bench] {path} {size:,}: first step {u['first_step_s']:.2f} s, peak RSS "
                  f"{u['peak_rss_first_step_mb']:.0f} MB, train/s {u['train']}, embed/s {u['embed']} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.data.run [flags]`; 0 on success."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = harness.parser(NAME, __doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    _defaults(args)
    args.work = harness.work_dir(args, NAME)
    if args.child:
        print(json.dumps(child(argparse.Namespace(**{**vars(args), "path": args.child}))))
        return 0
    small, large = args.sizes
    out, load_start = harness.out_dir(args, NAME), _load_avg()
    print(f"[data bench] generating {large:,} scenes in {args.work} (resumable)", flush=True)
    # before torch is set up in this process: the generating processes are forked from it
    generation = generate(args.work, large, [small, large], args.gen_procs)
    machine = {**harness.machine(args.note), "load_average": load_start, "cpus": os.cpu_count(),
               "load_start": load_start}
    res: dict[str, Any] = {"command": harness.command(NAME, argv), "machine": machine,
                           "settings": {k: getattr(args, k) for k in ("sizes", "batch", "steps", "embed", "workers")},
                           "units": {}, "generation": generation}
    print(f"[data bench] generation: {res['generation']}", flush=True)
    old = harness.read_results(out) if args.redo is not None and (out / "results.json").is_file() else {}
    reuse = old.get("units", {}) if old.get("settings") == res["settings"] else {}
    if not res["generation"]["written_now"] and old.get("generation", {}).get("written_now"):
        res["generation"] = old["generation"]  # the run that wrote the images says how long it took
    # the notes of the run whose units are reused, and this one's (once: a rerun may repeat its --note)
    res["notes"] = list(dict.fromkeys(old.get("notes", []) + ([args.note] if args.note else [])))
    measure_all(args, res, reuse, out)
    res["machine"]["load_end"] = _load_avg()
    res["verdicts"], res["summary"] = verdicts(res["units"], small, large)
    harness.write_results(out, res, render)
    for line in res["verdicts"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
