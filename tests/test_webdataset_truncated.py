"""A WebDataset shard cut mid-file (a truncated copy or download, a writer killed mid-shard) follows the
stream's `on_error` like a corrupt image: "skip" skips what it lost and counts it in the pass report,
"raise" stops with one line naming the shard and saying it is truncated."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from helpers import logs_warning
from PIL import Image
from torch.utils.data import DataLoader

from clipforge.data.loader import reporting
from clipforge.data.webdataset import WebDatasetStream
from clipforge.errors import ClipforgeError

N = 5


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (40 * i, 10, 200)).save(buf, "PNG")
    return buf.getvalue()


def write_shard(path: Path, n: int = N, mode: str = "w") -> dict[str, tuple[int, int]]:
    """Samples s0..s{n-1} (png + txt); returns each sample's (first byte of its png data, end of its txt data)
    in the uncompressed tar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for i in range(n):
            for ext, data in (("png", png(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key = m.name.split(".")[0]
            start = spans.get(key, (m.offset_data, 0))[0]
            spans[key] = (start, m.offset_data + m.size)
    return spans


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def read_all(stream: WebDatasetStream) -> list[str]:
    return [s.meta["id"] for s in stream]


def test_an_intact_shard_reads_whole_and_reports_nothing(tmp_path: Path) -> None:
    write_shard(tmp_path / "shard-000.tar")
    stream = WebDatasetStream(tmp_path / "shard-000.tar", shuffle_buffer=0)
    assert read_all(stream) == [f"shard-000.tar:s{i}.png" for i in range(N)]
    assert stream.end_pass() == []


@pytest.mark.parametrize("where", ["image", "caption", "between"])
def test_skip_counts_the_sample_cut_off_and_reports_it(tmp_path: Path, where: str) -> None:
    shard = tmp_path / "shard-000.tar"
    spans = write_shard(shard)
    start, end = spans["s3"]
    # Inside s3's image data, inside its caption, or right after it (s3 whole, the end marker and s4 lost:
    # s3 cannot be told from a sample that lost members, so it is skipped too).
    cut(shard, {"image": start + 20, "caption": end - 3, "between": end}[where])
    stream = WebDatasetStream(shard, shuffle_buffer=0, on_error="skip")
    assert read_all(stream) == [f"shard-000.tar:s{i}.png" for i in range(3)]
    with logs_warning(match=r"shard-000\.tar: pass 1: skipped 1 samples: shard-000\.tar:s3 \(truncated shard"):
        skipped = stream.end_pass()
    assert len(skipped) == 1 and skipped[0][0] == "shard-000.tar:s3" and "truncated" in skipped[0][1]
    assert stream.skipped == skipped


def test_raise_stops_with_one_line_naming_the_truncated_shard(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    spans = write_shard(shard)
    cut(shard, spans["s2"][0] + 10)
    stream = WebDatasetStream(shard, shuffle_buffer=0, on_error="raise")
    with pytest.raises(ClipforgeError, match=r"shard-000\.tar is truncated") as e:
        read_all(stream)
    msg = str(e.value)
    assert "\n" not in msg and str(shard) in msg and "after 2 complete samples, inside sample s2" in msg


def test_a_shard_cut_inside_its_first_header_is_truncated_too(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    write_shard(shard)
    cut(shard, 300)
    with pytest.raises(ClipforgeError, match="truncated.*before its first sample"):
        read_all(WebDatasetStream(shard, on_error="raise"))
    stream = WebDatasetStream(shard, on_error="skip")
    assert read_all(stream) == []
    assert [i for i, _ in stream.end_pass()] == ["shard-000.tar"]


def test_compressed_shard_cut_short(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar.gz"
    write_shard(shard, mode="w:gz")
    cut(shard, shard.stat().st_size // 2)
    with pytest.raises(ClipforgeError, match=r"shard-000\.tar\.gz is truncated"):
        read_all(WebDatasetStream(shard, on_error="raise"))
    stream = WebDatasetStream(shard, shuffle_buffer=0, on_error="skip")
    got = read_all(stream)
    skipped = stream.end_pass()
    assert len(skipped) == 1 and "truncated" in skipped[0][1]
    assert got == [f"shard-000.tar.gz:s{i}.png" for i in range(len(got))] and len(got) < N


def test_other_shards_are_read_whole_and_workers_report_the_cut(tmp_path: Path) -> None:
    spans = write_shard(tmp_path / "shards" / "a.tar")
    write_shard(tmp_path / "shards" / "b.tar")
    cut(tmp_path / "shards" / "a.tar", spans["s1"][0] + 5)
    stream = WebDatasetStream(tmp_path / "shards", shuffle_buffer=3, on_error="skip")
    loader = reporting(DataLoader(stream, batch_size=2, num_workers=1, collate_fn=lambda b: [s.meta["id"] for s in b],
                                  multiprocessing_context="fork"), stream)
    with logs_warning(match=r"skipped 1 samples: a\.tar:s1 \(truncated shard"):
        got = sorted(i for batch in loader for i in batch)
    assert got == ["a.tar:s0.png"] + [f"b.tar:s{i}.png" for i in range(N)]
    assert [i for i, _ in stream.skipped] == ["a.tar:s1"]


# --- the indexed reader (`open_dataset` on a .tar) treats a cut shard the same way ----------------------

def _indexed_shard(tmp_path: Path, n: int = 4) -> tuple[Path, int]:
    """An uncompressed shard of `n` samples (png + txt) and the byte offset where its last sample starts."""
    import io
    import tarfile

    from PIL import Image

    path = tmp_path / "idx.tar"
    starts = []
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            starts.append(tf.fileobj.tell())
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(buf, "PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path, starts[-1]


def test_indexed_reader_counts_or_refuses_a_cut_shard(tmp_path):
    from clipforge.data.user import open_dataset
    from clipforge.errors import ClipforgeError

    path, last = _indexed_shard(tmp_path)
    whole = path.read_bytes()
    assert len(open_dataset(str(path))) == 4
    path.write_bytes(whole[: last + 700])  # inside the last sample's image
    ds = open_dataset(str(path), on_error="skip")
    assert len(ds) == 3  # the sample the file ends in is dropped, and counted
    with pytest.raises(ClipforgeError, match="truncated"):
        open_dataset(str(path), on_error="raise")
