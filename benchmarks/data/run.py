"""Data at scale: a disk-backed CSV of JPEG scenes against the in-memory built-in path, at 10k and 100k pairs.

    python benchmarks/data/run.py                      # generate (resumable) + measure; see README.md
    python benchmarks/data/run.py --sizes 2000 20000 --steps 6 --out /tmp/r.json   # a smaller run

Per (size, path) one fresh single-thread process measures: the time from opening the data to the end of
the first training step, its peak RSS at that point, training throughput (samples/s of `train()`, steady
windows) and embedding throughput (`embed_dataset`) with 0 and 2 DataLoader workers. Results go to
`results.json` (every number, the machine, its load) and `results.md` (tables and verdicts).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHUNK = 1000
ARCH, IMAGE_SIZE = "ancestry", 40  # the demo's CLIP, at its input size


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
    tmp = done.with_suffix(".tmp")
    tmp.write_text("".join(rows))
    os.replace(tmp, done)  # the chunk is finished only once its list exists
    return b - a


def generate(out: Path, n: int, sizes: list[int], procs: int) -> dict:
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
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            for a in range(0, size, CHUNK):
                for line in (out / "chunks" / f"{a // CHUNK:04d}.tsv").read_text().splitlines()[: size - a]:
                    w.writerow(line.split("\t", 1))
        os.replace(tmp, path)
    disk = sum(p.stat().st_size for p in (out / "images").rglob("*.jpg")) if written else None
    return {"images": n, "written_now": written, "seconds": round(seconds, 1), "processes": procs,
            "bytes": disk}


# ------------------------------------------------------------------------------------------- measurement


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Head:
    """The first `n` items of a dataset (its pass reports still reach the dataset)."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.dataset[i]


def child(args: argparse.Namespace) -> dict:
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

        ds = open_dataset(Path(args.data_dir) / f"pairs-{args.size}.csv")
    else:
        from clipforge.data.cached import Cached
        from clipforge.data.scenes import ScenesDataset

        ds = Cached(ScenesDataset(split="train", size=args.size, image_size=IMAGE_SIZE, seed=0))
    opened = time.perf_counter() - t0
    run = Path(args.work) / f"{args.path}-{args.size}"
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


def _measure(args: argparse.Namespace, path: str, size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--size", str(size), "--data-dir", str(args.data_dir),
           "--work", str(args.work), "--batch", str(args.batch), "--steps", str(args.steps), "--embed", str(args.embed),
           "--workers", *map(str, args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{path} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def verdicts(units: dict[str, dict], small: int, large: int) -> tuple[list[str], dict]:
    d_s, d_l = units[f"disk/{small}"], units[f"disk/{large}"]
    t_ratio = _ratio(d_l["first_step_s"], d_s["first_step_s"])
    r_ratio = _ratio(d_l["peak_rss_first_step_mb"], d_s["peak_rss_first_step_mb"])
    lines = [
        f"time to first step, disk {small:,} -> {large:,}: {d_s['first_step_s']:.2f} s -> {d_l['first_step_s']:.2f} s "
        f"= {t_ratio:.2f}x (goal < 1.5x): {'holds' if t_ratio < 1.5 else 'does not hold'}",
        f"peak RSS at first step, disk {small:,} -> {large:,}: {d_s['peak_rss_first_step_mb']:.0f} MB -> "
        f"{d_l['peak_rss_first_step_mb']:.0f} MB = {r_ratio:.2f}x (goal < 1.5x): "
        f"{'holds' if r_ratio < 1.5 else 'does not hold'}",
    ]
    ratios = {}
    for size in (small, large):
        d, m = units[f"disk/{size}"], units[f"memory/{size}"]
        for w in d["train"]:
            ratios[f"train/{size}/w{w}"] = _ratio(d["train"][w]["samples_per_s"], m["train"][w]["samples_per_s"])
            ratios[f"embed/{size}/w{w}"] = _ratio(d["embed"][w]["samples_per_s"], m["embed"][w]["samples_per_s"])
    shown = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    lines.append(f"disk-backed / in-memory throughput (reported, no goal): {shown}")
    return lines, {"first_step_ratio": t_ratio, "peak_rss_ratio": r_ratio, "throughput_ratio": ratios}


def write_markdown(path: Path, res: dict) -> None:
    rows = ["| path | pairs | open s | first step s | peak RSS at first step MB | train/s w0 | train/s w2 | "
            "embed/s w0 | embed/s w2 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for u in res["units"].values():
        t, e = u["train"], u["embed"]
        rows.append(f"| {u['path']} | {u['size']:,} | {u['open_s']:.2f} | {u['first_step_s']:.2f} | "
                    f"{u['peak_rss_first_step_mb']:.0f} | " + " | ".join(
                        f"{x.get(w, {}).get('samples_per_s', float('nan')):.1f}" for x in (t, e) for w in ("0", "2"))
                    + " |")
    gen = res.get("generation", {})
    text = [
        "# Data at scale: results", "",
        f"Command: `{res['command']}`", "",
        f"Machine: {res['machine']['cpus']} CPU cores, load average at start {res['machine']['load_start']} and end "
        f"{res['machine']['load_end']}. **Shared machine, timings indicative**: other helper sessions (tests, "
        "benchmarks) ran on the same two cores during this run. Every measuring process is single-thread "
        "(torch, OMP, MKL = 1); the 2-worker runs add two worker processes.", "",
        f"Data: {gen.get('images', '?'):,} scene JPEGs ({ARCH} input size {IMAGE_SIZE} px) generated in "
        f"{gen.get('seconds', '?')} s by {gen.get('processes', '?')} single-thread processes (the invocation that "
        "wrote them; later ones reuse the files)." if gen else "", "",
        f"Model: random-init `{ARCH}`, global batch {res['settings']['batch']}; training throughput is the mean "
        f"of windows 2-3 of {res['settings']['steps']} steps each (window 1 holds worker start-up); embedding: "
        f"`embed_dataset` over the first {res['settings']['embed']:,} pairs. First step = open the data + one "
        "`train()` step with 0 workers (the in-memory path renders and caches every scene first, as "
        "`clipforge moe` does for `--data scenes`). The JPEGs sit in the page cache (warm reads).", "",
        *rows, "", "## Verdicts", "", *[f"* {v}" for v in res["verdicts"]], "",
        *(["## Notes", "", *[f"* {n}" for n in res.get("notes", [])], ""] if res.get("notes") else []),
    ]
    path.write_text("\n".join(text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench-data", help="where the JPEGs + CSVs go")
    p.add_argument("--work", type=Path, default=None, help="training run folders (default DATA_DIR/work)")
    p.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="steps per throughput window (3 windows)")
    p.add_argument("--embed", type=int, default=1024, help="pairs per embedding measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--gen-procs", type=int, default=2)
    p.add_argument("--redo", nargs="*", choices=["disk", "memory"], default=None,
                   help="resume: reuse the units of an existing --out with the same settings except these paths")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--note", action="append", help="a line for results.md (e.g. what else ran on the machine)")
    p.add_argument("--child", choices=["disk", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work = args.work or args.data_dir / "work"
    if args.child:
        print(json.dumps(child(argparse.Namespace(**{**vars(args), "path": args.child}))))
        return
    small, large = args.sizes
    res = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
           "machine": {"cpus": os.cpu_count(), "load_start": _load_avg()},
           "settings": {k: getattr(args, k) for k in ("sizes", "batch", "steps", "embed", "workers")}, "units": {}}
    print(f"[data bench] generating {large:,} scenes in {args.data_dir} (resumable)", flush=True)
    res["generation"] = generate(args.data_dir, large, [small, large], args.gen_procs)
    print(f"[data bench] generation: {res['generation']}", flush=True)
    old = json.loads(args.out.read_text()) if args.redo is not None and args.out.is_file() else {}
    reuse = old.get("units", {}) if old.get("settings") == res["settings"] else {}
    if not res["generation"]["written_now"] and old.get("generation", {}).get("written_now"):
        res["generation"] = old["generation"]  # the run that wrote the images says how long it took
    if old.get("notes"):
        res["notes"] = old["notes"]
    res["notes"] = res.get("notes", []) + list(args.note or [])
    for size in (small, large):
        for path in ("disk", "memory"):
            if path not in (args.redo or []) and f"{path}/{size}" in reuse:
                res["units"][f"{path}/{size}"] = {**reuse[f"{path}/{size}"], "reused": True}
                print(f"[data bench] {path} {size:,}: reused from {args.out}", flush=True)
                continue
            t = time.perf_counter()
            res["units"][f"{path}/{size}"] = u = _measure(args, path, size)
            print(f"[data bench] {path} {size:,}: first step {u['first_step_s']:.2f} s, peak RSS "
                  f"{u['peak_rss_first_step_mb']:.0f} MB, train/s {u['train']}, embed/s {u['embed']} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    res["machine"]["load_end"] = _load_avg()
    res["verdicts"], res["summary"] = verdicts(res["units"], small, large)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, args.out)
    write_markdown(args.out.with_suffix(".md"), res)
    for line in res["verdicts"]:
        print(line)


if __name__ == "__main__":
    main()
