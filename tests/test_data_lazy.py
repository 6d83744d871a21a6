"""Lazy user datasets: opening decodes nothing, passes report what they skipped, also from workers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import logs_warning
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.data import loader as L
from clipforge.data import user_formats
from clipforge.data.user import open_dataset
from clipforge.errors import ClipforgeError

N = 2000
MISSING, CORRUPT, NOT_UTF8 = 17, 1234, 1500  # row indices (0-based, after the header)


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 256, (7 * i) % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


def write_big_csv(folder: Path) -> Path:
    """2,000 rows: one image missing, one corrupt, one caption with a byte that is not UTF-8."""
    (folder / "img").mkdir(parents=True)
    lines = [b"image,caption\n"]
    for i in range(N):
        if i != MISSING:
            (folder / "img" / f"{i:05d}.png").write_bytes(b"\x89PNG garbage" if i == CORRUPT else _png(i))
        caption = b"a caf\xe9 photo" if i == NOT_UTF8 else f"picture number {i}".encode()  # latin-1 é
        lines.append(f"img/{i:05d}.png,".encode() + caption + b"\n")
    path = folder / "data.csv"
    path.write_bytes(b"".join(lines))
    return path


def _ids(samples: list) -> list[str]:
    return [s.meta["id"] for s in samples]


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_csv(tmp_path_factory.mktemp("lazy"))


def test_open_decodes_nothing_and_a_pass_reports_the_three(big_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = []
    real = user_formats.decode
    monkeypatch.setattr(user_formats, "decode", lambda src: decodes.append(src) or real(src))
    with logs_warning(match=r"skipped 1 of 2,000 samples: img/01500.png \(caption is not valid UTF-8 "
                                         r"\(byte 0xe9\), line 1502 of data.csv\)"):
        ds = open_dataset(big_csv)
    assert decodes == [] and len(ds) == N - 1

    # One pass through two workers: the bad images are found there and reported here, by name.
    loader = L.reporting(DataLoader(ds, batch_size=128, num_workers=2, collate_fn=_ids))
    with logs_warning(match="pass 1") as caught:
        seen = [i for batch in loader for i in batch]
    report = [m for m in caught.messages if "pass 1" in m]
    assert len(report) == 1 and "skipped 3 of 2,000 samples" in report[0], report
    for name in ("img/00017.png (missing)", "img/01234.png (cannot identify image file)", "img/01500.png"):
        assert name in report[0]
    # Nothing else lost: every other sample came through (the two bad rows were replaced by neighbours).
    good = {f"img/{i:05d}.png" for i in range(N)} - {"img/00017.png", "img/01234.png", "img/01500.png"}
    assert len(seen) == N - 1 and set(seen) == good
    assert {i for i, _ in ds.skipped} == {"img/00017.png", "img/01234.png", "img/01500.png"}

    # A second pass skips the two known-bad images without reading them, and warns about nothing new.
    decodes.clear()
    with logs_warning(expect=False):
        again = [i for batch in L.reporting(DataLoader(ds, batch_size=500, collate_fn=_ids)) for i in batch]
    assert set(again) == good and len(decodes) == N - 1  # one decode per index (bad ones: their neighbour)
    assert not {Path(p).name for p in decodes} & {"00017.png", "01234.png"}


def test_raise_policy_names_file_and_line(big_csv: Path) -> None:
    with pytest.raises(ClipforgeError, match=r"line 1502 of data.csv\): caption is not valid UTF-8 \(byte 0xe9\)"):
        open_dataset(big_csv, on_error="raise")


def test_raise_in_a_worker_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "d.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "gone.png", "caption": "y"}\n')
    ds = open_dataset(tmp_path / "d.jsonl", on_error="raise")  # lazy: found when read
    with pytest.raises(ClipforgeError) as e:
        list(L.reporting(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=_ids)))
    assert str(e.value) == "cannot read image gone.png (line 2 of d.jsonl): missing"


def test_jsonl_line_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "d.jsonl").write_bytes(b'{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": "\xff"}\n')
    with logs_warning(match=r"line 2 \(not valid UTF-8 \(byte 0xff\), line 2 of d.jsonl\)"):
        ds = open_dataset(tmp_path / "d.jsonl")
    assert len(ds) == 1
    with pytest.raises(ClipforgeError, match=r"line 2 of d.jsonl\): not valid UTF-8"):
        open_dataset(tmp_path / "d.jsonl", on_error="raise")


def test_worker_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert L.auto_workers() == 3  # 16 cores over 4 ranks, one each for the main process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert L.auto_workers() == L.MAX_AUTO_WORKERS
    assert L.worker_count(0) == 0 and L.worker_count(3) == 3
    with L.default_workers(2):
        assert L.worker_count(0) == 2 and L.worker_count(5) == 5
    assert L.worker_count(0) == 0
    with pytest.raises(ClipforgeError, match="--workers must be 0 or more"):
        L.resolve_workers(-1)
