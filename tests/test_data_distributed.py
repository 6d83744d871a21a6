"""Two gloo ranks: the MCL embedding pass is sharded (each rank reads half) and gives a single process's
labels; a streamed WebDataset gives every sample to exactly one (rank, worker) per epoch."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.data.webdataset import WebDatasetStream
from clipforge.eval.embed import embed_images
from clipforge.models.registry import build
from clipforge.moe.clusters import embed_dataset, labels_for_stage

WORLD, N, BATCH = 2, 64, 8
SHARD_SIZES = (7, 5, 9)  # 3 shards over 2 ranks x 2 workers: split by sample
SHARD_SIZES_EVEN = (6, 4, 5, 7)  # 4 shards, 4 slots: split by shard


class Squares(ImageTextDataset):
    """Coloured squares; every read is logged to `log` (this process's reads)."""

    name = "squares"

    def __init__(self, n: int = N) -> None:
        g = np.random.default_rng(0)
        self.rgb = [tuple(int(v) for v in g.integers(0, 256, 3)) for _ in range(n)]
        self.log: list[int] = []

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, i: int) -> Sample:
        self.log.append(i)
        r, g, b = self.rgb[i]
        return Sample(Image.new("RGB", (32, 32), (r, g, b)), [f"a square of red {r} green {g}"], None)


def write_shards(folder: Path, sizes: tuple[int, ...]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s, size in enumerate(sizes):
        with tarfile.open(folder / f"part-{s:02d}.tar", "w") as tf:
            for j in range(size):
                key = f"s{s}_{j:03d}"
                buf = io.BytesIO()
                Image.new("RGB", (4, 4), (s * 40, j, 0)).save(buf, "PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", f"caption {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                keys.append(f"part-{s:02d}.tar:{key}.png")
    return keys


def _with_worker(samples: list[Sample]) -> list[tuple[int, str]]:
    info = get_worker_info()
    return [(info.id if info else -1, s.meta["id"]) for s in samples]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = build("tiny", seed=0)
        ds = Squares()
        u, w = embed_dataset(model, ds, batch_size=BATCH, num_workers=0)  # gather="all"
        read = sorted(ds.log)
        ds.log.clear()
        labels = labels_for_stage(model, ds, None, 3, 2, seed=5, batch_size=BATCH, num_workers=0)
        read_again = sorted(ds.log)
        images = embed_images(model, ds, batch_size=BATCH, shard=True)  # an evaluation pass, sharded
        result = {"images": images.tolist(), "read": read, "read_again": read_again, "ids": labels.ids.tolist(),
                  "u": u.astype(np.float32).tolist(), "w": w.astype(np.float32).tolist(), "streams": {}}
        for name in ("uneven", "even"):
            stream = WebDatasetStream(Path(out) / name, shuffle_buffer=4, seed=3)
            for epoch in (0, 1):
                stream.set_epoch(epoch)
                # fork: processes started by mp.spawn would spawn their workers (a fresh import each).
                loader = DataLoader(stream, batch_size=3, num_workers=2, collate_fn=_with_worker,
                                    multiprocessing_context="fork")
                result["streams"][f"{name}/{epoch}"] = [p for batch in loader for p in batch]
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_embedding_and_streamed_shards(tmp_path: Path) -> None:
    keys = {"uneven": write_shards(tmp_path / "uneven", SHARD_SIZES),
            "even": write_shards(tmp_path / "even", SHARD_SIZES_EVEN)}
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    # Each rank read exactly its half, once per pass, and both ranks hold every embedding.
    assert ranks[0]["read"] == list(range(N // 2)) and ranks[1]["read"] == list(range(N // 2, N))
    assert ranks[0]["read_again"] == ranks[0]["read"] and ranks[1]["read_again"] == ranks[1]["read"]
    model = build("tiny", seed=0)
    u, w = embed_dataset(model, Squares(), batch_size=BATCH)
    for r in ranks:
        assert np.array_equal(np.asarray(r["u"], np.float32), u.astype(np.float32))
        assert np.array_equal(np.asarray(r["w"], np.float32), w.astype(np.float32))
    full = embed_images(model, Squares(), batch_size=BATCH)
    for r in ranks:
        assert torch.equal(torch.tensor(r["images"]), full)
    single = labels_for_stage(model, Squares(), None, 3, 2, seed=5, batch_size=BATCH)
    assert ranks[0]["ids"] == ranks[1]["ids"] == single.ids.tolist()
    assert len(set(single.ids.tolist())) > 1

    # Streams: per epoch, every sample exactly once over all (rank, worker) slots, every slot used.
    for name, all_keys in keys.items():
        orders = []
        for epoch in (0, 1):
            got = [(r, wk, k) for r, res in enumerate(ranks) for wk, k in res["streams"][f"{name}/{epoch}"]]
            ids = [k for _, _, k in got]
            assert sorted(ids) == sorted(all_keys), (name, epoch)
            assert {(r, wk) for r, wk, _ in got} == {(0, 0), (0, 1), (1, 0), (1, 1)}
            orders.append(ids)
        assert orders[0] != orders[1]  # a new shuffle each epoch
