"""open_dataset on every user format: a tiny dataset with 6 good images, one corrupt, one missing.

Most tests open with `validate=True` (every image checked at open, bad ones dropped) so they can check
the dataset's contents by index; lazy opening (the default) has its own tests here and in
test_data_lazy.py."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest
from helpers import logs_warning
from PIL import Image

from clipforge.data import get_dataset
from clipforge.data.user import UserDataset, _expand_braces, open_dataset
from clipforge.errors import ClipforgeError

# Row order: the missing file comes first, so it is the first error in "raise" mode.
ROWS = ["g0", "g1", "gone", "g2", "bad", "g3", "g4", "g5"]
GOOD = [r for r in ROWS if r.startswith("g") and r != "gone"]


def caps(r: str) -> list[str]:
    return [f"a {r} thing", f"another {r} view"]


def png_bytes(i: int) -> bytes:
    # g5 is grayscale JPEG: user data must still come back as RGB.
    buf = io.BytesIO()
    if i == 5:
        Image.new("L", (5, 4), 40 * i).save(buf, "JPEG")
    else:
        Image.new("RGB", (4, 5), (40 * i, 10, 200)).save(buf, "PNG")
    return buf.getvalue()


def image_bytes(r: str) -> bytes | None:
    if r == "gone":
        return None
    if r == "bad":
        return os.urandom(64)
    return png_bytes(int(r[1]))


def fname(r: str) -> str:
    return f"imgs/{r}.jpg" if r == "g5" else f"imgs/{r}.png"


def write_images(folder: Path) -> None:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for r in ROWS:
        data = image_bytes(r)
        if data is not None:
            (folder / fname(r)).write_bytes(data)


def check(ds: UserDataset, bad: set[str], n_caps: int = 2) -> None:
    """All good samples present, in order, with their captions; `.skipped` names the two bad ones."""
    assert len(ds) == len(GOOD)
    for i, r in enumerate(GOOD):
        s = ds[i]
        assert s.captions == caps(r)[:n_caps]
        assert s.image.mode == "RGB" and s.label is None
        assert s.image.size == ((5, 4) if r == "g5" else (4, 5))
    assert {ident for ident, _ in ds.skipped} == bad
    reasons = dict(ds.skipped)
    assert any(v.startswith("missing") for v in reasons.values())
    assert any("cannot identify" in v for v in reasons.values())


def write_csv(
    path: Path, sep: str | None, delimiter: str = ",", img_col: str = "image", cap_col: str = "caption"
) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow([img_col, cap_col])
        for r in ROWS:
            w.writerow([fname(r), sep.join(caps(r)) if sep else caps(r)[0]])


FILE_BAD = {"imgs/gone.png", "imgs/bad.png"}


# ---------------------------------------------------------------- CSV / TSV / JSONL


def test_csv_one_caption(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_csv(tmp_path / "data.csv", None)
    with logs_warning(match="skipped 2 of 8 samples"):
        ds = open_dataset(tmp_path / "data.csv", validate=True)
    check(ds, FILE_BAD, n_caps=1)


def test_csv_with_separator_and_root(tmp_path: Path) -> None:
    write_images(tmp_path / "elsewhere")
    (tmp_path / "meta").mkdir()
    write_csv(tmp_path / "meta" / "data.csv", "|")
    with logs_warning():
        ds = open_dataset(str(tmp_path / "meta" / "data.csv"), caption_sep="|", root=tmp_path / "elsewhere",
                          validate=True)
    check(ds, FILE_BAD)


def test_tsv(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_csv(tmp_path / "data.tsv", " || ", delimiter="\t")
    with logs_warning():
        ds = open_dataset(tmp_path / "data.tsv", caption_sep="||", validate=True)
    check(ds, FILE_BAD)


def write_jsonl(path: Path, img_key: str = "image") -> None:
    with open(path, "w") as f:
        for r in ROWS:
            f.write(json.dumps({img_key: fname(r), "caption": caps(r)}) + "\n")


def test_jsonl_caption_lists(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_jsonl(tmp_path / "data.jsonl")
    with logs_warning():
        ds = open_dataset(tmp_path / "data.jsonl", validate=True)
    check(ds, FILE_BAD)
    assert ds[0].meta["id"] == "imgs/g0.png"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_raise_names_first_bad_file(tmp_path: Path, suffix: str) -> None:
    write_images(tmp_path)
    path = tmp_path / f"data{suffix}"
    write_csv(path, None) if suffix == ".csv" else write_jsonl(path)
    line = 4 if suffix == ".csv" else 3  # the CSV has a header line
    with pytest.raises(ClipforgeError, match=rf"imgs/gone\.png \(line {line} of data{suffix}\): missing"):
        open_dataset(path, on_error="raise", validate=True)


def test_missing_caption_column(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_csv(tmp_path / "data.csv", None, cap_col="words")
    with pytest.raises(ClipforgeError, match=r"no caption column 'nope' \(columns: image, words\)"):
        open_dataset(tmp_path / "data.csv", caption_key="nope")
    with pytest.raises(ClipforgeError, match="data.csv: no caption column 'caption'"):
        open_dataset(tmp_path / "data.csv")
    with logs_warning():
        ds = open_dataset(tmp_path / "data.csv", caption_key="words", validate=True)
    assert len(ds) == 6


def test_lazy_skip_at_read_time(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_csv(tmp_path / "data.csv", None)
    ds = open_dataset(tmp_path / "data.csv")  # lazy is the default
    assert len(ds) == 8 and ds.skipped == []
    s = ds[2]  # missing → the next good sample
    assert s.captions == caps("g2")[:1]
    assert ds.skipped == []  # reported when the pass ends
    with logs_warning(match=r"pass 1: .*skipped 1 of 8 samples: imgs/gone.png \(missing\)"):
        assert ds.end_pass() == [("imgs/gone.png", "missing")]
    assert ds.skipped == [("imgs/gone.png", "missing")]
    assert ds[2].captions == caps("g2")[:1] and ds.end_pass() == []  # known bad: not reported again
    strict = open_dataset(tmp_path / "data.csv", validate=False, on_error="raise")
    with pytest.raises(ClipforgeError, match="bad.png"):
        strict[4]


# ---------------------------------------------------------------- imagefolder


@pytest.mark.parametrize("meta", ["metadata.csv", "metadata.jsonl"])
def test_imagefolder(tmp_path: Path, meta: str) -> None:
    folder = tmp_path / "train"
    write_images(folder)
    if meta.endswith(".csv"):
        write_csv(folder / meta, "|", img_col="file_name", cap_col="text")
    else:
        write_jsonl(folder / meta, img_key="file_name")
    with logs_warning():
        ds = open_dataset(tmp_path, split="train", caption_sep="|", validate=True)  # split subfolder
    check(ds, FILE_BAD)


# ---------------------------------------------------------------- WebDataset


def write_shards(folder: Path, n_shards: int, name: str = "shard") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}-{k:03d}.tar" for k in range(n_shards)]
    tars = [tarfile.open(p, "w") for p in paths]  # noqa: SIM115 - rows go to several open shards; closed below
    for i, r in enumerate(ROWS):
        tf = tars[i * n_shards // len(ROWS)]

        def add(member: str, data: bytes, tf: tarfile.TarFile = tf) -> None:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        data = image_bytes(r)
        if data is not None:
            add(f"{r}.{'jpg' if r == 'g5' else 'png'}", data)
        if i % 2:  # half the captions in json, half in txt
            add(f"{r}.json", json.dumps({"caption": caps(r)[0], "id": i}).encode())
        else:
            add(f"{r}.txt", caps(r)[0].encode())
    for tf in tars:
        tf.close()
    return paths


def test_webdataset_single_tar(tmp_path: Path) -> None:
    (p,) = write_shards(tmp_path, 1)
    with logs_warning():
        ds = open_dataset(p, validate=True)
    check(ds, {"shard-000.tar:gone", "shard-000.tar:bad.png"}, n_caps=1)
    with pytest.raises(ClipforgeError, match="shard-000.tar:gone"):
        open_dataset(p, on_error="raise", validate=True)


def test_webdataset_brace_glob_and_folder(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", 2)
    bad = {"shard-000.tar:gone", "shard-001.tar:bad.png"}
    for spec in [tmp_path / "shards/shard-{000..001}.tar", tmp_path / "shards/*.tar", tmp_path / "shards"]:
        with logs_warning():
            ds = open_dataset(str(spec), validate=True)
        check(ds, bad, n_caps=1)
    with pytest.raises(ClipforgeError, match="shard-002.tar"):
        open_dataset(str(tmp_path / "shards/shard-{000..002}.tar"))
    with pytest.raises(ClipforgeError, match="no caption: no 'label'"):
        open_dataset(tmp_path / "shards", caption_key="label")


def test_expand_braces() -> None:
    assert _expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert _expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


# ---------------------------------------------------------------- parquet / datasets


def parquet_cells(kind: str) -> list:
    if kind == "path":
        return [fname(r) for r in ROWS]
    if kind == "struct":
        return [{"bytes": image_bytes(r), "path": fname(r)} for r in ROWS]
    return [image_bytes(r) for r in ROWS]  # raw bytes: the missing one is an empty cell


@pytest.mark.parametrize(
    "kind,bad",
    [
        ("path", FILE_BAD),
        # A struct row is named by its row and the path it carries.
        ("struct", {"data.parquet:row 2 (imgs/gone.png)", "data.parquet:row 4 (imgs/bad.png)"}),
        ("bytes", {"data.parquet:row 2", "data.parquet:row 4"}),
    ],
)
def test_parquet(tmp_path: Path, kind: str, bad: set[str]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    write_images(tmp_path)
    table = pa.table({"image": parquet_cells(kind), "caption": [caps(r) for r in ROWS]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=3)
    with logs_warning():
        ds = open_dataset(tmp_path / "data.parquet", validate=True)
    check(ds, bad)
    assert [ds[i].captions for i in range(len(ds))] == [caps(r) for r in GOOD]
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy
    assert again[5].captions == caps("g5")
    with pytest.raises(ClipforgeError, match=r"row 2"):
        open_dataset(tmp_path / "data.parquet", on_error="raise", validate=True)


def test_datasets_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write_images(tmp_path)
    # Path strings, relative to the dataset folder's parent via `root`.
    columns = {"image": [fname(r) for r in ROWS], "caption": [caps(r) for r in ROWS]}
    paths = datasets.Dataset.from_dict(columns)
    paths.save_to_disk(str(tmp_path / "hf_paths"))
    with logs_warning():
        ds = open_dataset(tmp_path / "hf_paths", root=tmp_path, validate=True)
    check(ds, FILE_BAD)

    # An Image feature with embedded bytes (a missing file cannot even be saved, so only corrupt).
    rows = [r for r in ROWS if r != "gone"]
    cells = [{"bytes": image_bytes(r), "path": None} for r in rows]
    emb = datasets.Dataset.from_dict({"img": cells, "text": [caps(r)[0] for r in rows]})
    emb = emb.cast_column("img", datasets.Image())
    datasets.DatasetDict(train=emb, test=emb.select(range(2))).save_to_disk(str(tmp_path / "hf_dict"))
    with pytest.raises(ClipforgeError, match="holds splits train, test"):
        open_dataset(tmp_path / "hf_dict", image_key="img", caption_key="text")
    with logs_warning(match="row 3 \\(cannot identify"):
        ds = open_dataset(tmp_path / "hf_dict", split="train", image_key="img", caption_key="text",
                          validate=True)
    assert [s.captions[0] for s in (ds[i] for i in range(len(ds)))] == [caps(r)[0] for r in GOOD]
    assert ds.skipped == [("row 3", "cannot identify image file")]
    assert len(pickle.loads(pickle.dumps(ds))) == 6
    test = open_dataset(tmp_path / "hf_dict", split="test", image_key="img", caption_key="text")
    assert len(test) == 2
    with pytest.raises(ClipforgeError, match=r"no image column 'image' \(columns: img, text\)"):
        open_dataset(tmp_path / "hf_dict", split="train", caption_key="text")


# ---------------------------------------------------------------- spec errors


def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(ClipforgeError, match="dataset not found: .*nope.csv"):
        open_dataset(tmp_path / "nope.csv")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ClipforgeError, match="notes.txt: unknown dataset format '.txt'"):
        open_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipforgeError, match="empty: unknown dataset format"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(ClipforgeError, match="on_error must be"):
        open_dataset(tmp_path / "notes.txt", on_error="ignore")
    with pytest.raises(ClipforgeError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet", "train")


def test_get_dataset_falls_back_to_paths(tmp_path: Path) -> None:
    write_images(tmp_path)
    write_jsonl(tmp_path / "data.jsonl")
    with logs_warning():
        ds = get_dataset(str(tmp_path / "data.jsonl"), "train", validate=True)
    assert len(ds) == 6


def test_a_dataset_is_identified_by_path_size_and_time_not_its_name(tmp_path):
    """A run's settings hold the data's identity: another train.csv of the same name is other data."""
    from clipforge.data.base import identity

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (8, 8), "red").save(tmp_path / d / "x.png")
    (tmp_path / "a" / "train.csv").write_text("image,caption\nx.png,a red square\n")
    (tmp_path / "b" / "train.csv").write_text("image,caption\nx.png,a red square, larger file\n")
    a, b = (open_dataset(tmp_path / d / "train.csv") for d in ("a", "b"))
    assert a.name == b.name == "train.csv" and identity(a) != identity(b)
    assert identity(a) == identity(open_dataset(tmp_path / "a" / "train.csv"))
    before = identity(a)
    os.utime(tmp_path / "a" / "train.csv", ns=(1, 1))
    assert identity(open_dataset(tmp_path / "a" / "train.csv")) != before
    assert identity(get_dataset("mnist", split="test")) == "mnist"
