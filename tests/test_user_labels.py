"""Class labels in users' data (`open_dataset(label_key=...)`), class-name / template files, and zero-shot
classification on a user's labelled CSV."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clipforge.data import open_mixture
from clipforge.data.user import open_dataset
from clipforge.data.webdataset import WebDatasetStream
from clipforge.errors import ClipforgeError
from clipforge.eval.prompts import read_classnames, read_templates

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220)}


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, "PNG")
    return buf.getvalue()


def images(folder: Path, n: int = 6) -> list[tuple[str, str]]:
    """n 8x8 PNGs cycling through the colours: [(relative path, colour)]."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        (folder / "imgs" / f"{i}.png").write_bytes(png(COLOURS[colour]))
        out.append((f"imgs/{i}.png", colour))
    return out


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in r) for r in [header, *rows]) + "\n")
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# -- formats -----------------------------------------------------------------------------------------


def test_csv_string_labels_custom_columns(tmp_path: Path) -> None:
    rows = [[p, f"a {c} square", c] for p, c in images(tmp_path)]
    f = write_csv(tmp_path / "data.csv", ["path", "text", "category"], rows)
    ds = open_dataset(f, image_key="path", caption_key="text", label_key="category")
    assert ds.classnames == ["blue", "green", "red"]  # str order
    assert ds.has_captions
    for i, (_, c) in enumerate(images(tmp_path)):
        s = ds[i]
        assert ds.classnames[s.label] == c and ds.label(i) == s.label
        assert s.captions == [f"a {c} square"]


def test_csv_integer_labels_cover_zero_to_max(tmp_path: Path) -> None:
    rows = [[p, f"x{i}", [0, 3, 1][i % 3]] for i, (p, _) in enumerate(images(tmp_path))]
    f = write_csv(tmp_path / "data.csv", ["image", "caption", "y"], rows)
    ds = open_dataset(f, label_key="y")
    assert ds.classnames == ["0", "1", "2", "3"]  # class 2 absent, still an index
    assert [ds[i].label for i in range(len(ds))] == [0, 3, 1, 0, 3, 1]


def test_jsonl_labels_without_captions(tmp_path: Path) -> None:
    from clipforge.eval import retrieval
    from clipforge.models.registry import build

    lines = [json.dumps({"file": p, "kind": c}) for p, c in images(tmp_path)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    ds = open_dataset(tmp_path / "data.jsonl", image_key="file", label_key="kind")
    assert not ds.has_captions and ds[0].captions == [] and ds.classnames == ["blue", "green", "red"]
    with pytest.raises(ClipforgeError, match="has no captions .*no caption column 'caption'") as e:
        retrieval(build("tiny", seed=0), ds)
    one_line(e)


def test_some_rows_captioned_the_others_are_bad(tmp_path: Path) -> None:
    rows = [[p, "" if i == 2 else f"cap {i}", c] for i, (p, c) in enumerate(images(tmp_path))]
    f = write_csv(tmp_path / "data.csv", ["image", "caption", "label"], rows)
    ds = open_dataset(f, label_key="label")
    assert len(ds) == 5 and ds.skipped == [("imgs/2.png", "no caption")] and ds.has_captions


def test_imagefolder_metadata_labels(tmp_path: Path) -> None:
    rows = [[p, c] for p, c in images(tmp_path)]
    write_csv(tmp_path / "metadata.csv", ["file_name", "label"], rows)
    ds = open_dataset(tmp_path, label_key="label")
    assert ds.classnames == ["blue", "green", "red"] and ds[1].label == 1  # imgs/1.png is green
    assert not ds.has_captions


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_cls_members_and_json_field(tmp_path: Path) -> None:
    samples = [{"png": png(rgb), "cls": f"{i % 3}\n".encode(), "txt": f"cap {i}".encode()}
               for i, rgb in enumerate(COLOURS.values())]
    ds = open_dataset(write_shard(tmp_path / "a.tar", samples), label_key="cls")
    assert ds.classnames == ["0", "1", "2"] and [ds[i].label for i in range(3)] == [0, 1, 2]
    assert ds[0].captions == ["cap 0"]
    samples = [{"png": png(rgb), "json": json.dumps({"animal": name}).encode()}
               for name, rgb in zip(["dog", "cat", "dog"], COLOURS.values())]
    ds = open_dataset(write_shard(tmp_path / "b.tar", samples), label_key="animal")
    assert ds.classnames == ["cat", "dog"] and [ds[i].label for i in range(3)] == [1, 0, 1]
    assert not ds.has_captions
    with pytest.raises(ClipforgeError, match=r"b\.tar: no label 'cls'.*members: json, png") as e:
        open_dataset(tmp_path / "b.tar", label_key="cls")
    one_line(e)
    stream = WebDatasetStream(tmp_path / "b.tar", shuffle_buffer=0, label_key="animal", classnames=["cat", "dog"])
    assert [s.label for s in stream] == [1, 0, 1]
    stream = WebDatasetStream(tmp_path / "a.tar", shuffle_buffer=0, label_key="cls")
    assert [s.label for s in stream] == [0, 1, 2]


def test_parquet_and_save_to_disk_classlabel(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    paths = images(tmp_path)
    feats = datasets.Features(image=datasets.Value("string"), label=datasets.ClassLabel(names=["red", "green", "blue"]))
    hf = datasets.Dataset.from_dict({"image": [p for p, _ in paths],
                                     "label": [list(COLOURS).index(c) for _, c in paths]}, features=feats)
    hf.to_parquet(str(tmp_path / "data.parquet"))
    hf.save_to_disk(str(tmp_path / "hf"))
    for spec, root in ((tmp_path / "data.parquet", None), (tmp_path / "hf", tmp_path)):
        ds = open_dataset(spec, label_key="label", root=root)
        assert ds.classnames == ["red", "green", "blue"]  # the ClassLabel's names, in its order
        assert [ds.classnames[ds[i].label] for i in range(len(ds))] == [c for _, c in paths]


def test_open_mixture_passes_label_key_and_identity_changes(tmp_path: Path) -> None:
    rows = [[p, f"a {c}", c] for p, c in images(tmp_path)]
    f = write_csv(tmp_path / "data.csv", ["image", "caption", "label"], rows)
    ds = open_mixture([str(f)], split="test", label_key="label")
    assert ds.classnames == ["blue", "green", "red"] and ds[0].label == 2
    plain = open_mixture([str(f)], split="test")
    assert plain.classnames is None and plain[0].label is None
    assert "label_key" not in plain.identity() and ds.identity() == {**plain.identity(), "label_key": "label"}


# -- bad labels ----------------------------------------------------------------------------------------


def test_missing_label_skipped_or_raised(tmp_path: Path) -> None:
    rows = [[p, "cap", "" if i == 3 else c] for i, (p, c) in enumerate(images(tmp_path))]
    f = write_csv(tmp_path / "data.csv", ["image", "caption", "category"], rows)
    ds = open_dataset(f, label_key="category")
    assert len(ds) == 5 and ds.skipped == [("imgs/3.png", "no label 'category'")]
    with pytest.raises(ClipforgeError, match=r"imgs/3\.png \(line 5 of data\.csv\): no label 'category'") as e:
        open_dataset(f, label_key="category", on_error="raise")
    one_line(e)


def test_unknown_label_column(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "data.csv", ["path", "text"], [[p, c] for p, c in images(tmp_path)])
    with pytest.raises(ClipforgeError, match=r"data\.csv: no label column 'category' \(columns: path, text\)") as e:
        open_dataset(f, image_key="path", caption_key="text", label_key="category")
    one_line(e)


# -- class names and templates ---------------------------------------------------------------------------


def test_classnames_files(tmp_path: Path) -> None:
    (tmp_path / "classnames.txt").write_text("red\ngreen\nblue\n\n")
    assert read_classnames(tmp_path / "classnames.txt", n_classes=3) == ["red", "green", "blue"]
    with pytest.raises(ClipforgeError, match=r"classnames\.txt: 3 class names, but the dataset has 4 classes") as e:
        read_classnames(tmp_path / "classnames.txt", n_classes=4)
    one_line(e)
    (tmp_path / "names.json").write_text(json.dumps({"colours": ["r", "g"], "pets": ["cat", "dog", "fish"]}))
    assert read_classnames(tmp_path / "names.json", key="pets") == ["cat", "dog", "fish"]
    with pytest.raises(ClipforgeError, match=r"names\.json: .*pass key; keys: colours, pets"):
        read_classnames(tmp_path / "names.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ClipforgeError, match=r"bad\.json: invalid JSON") as e:
        read_classnames(tmp_path / "bad.json")
    one_line(e)


def test_templates(tmp_path: Path) -> None:
    openai = read_templates("openai")
    assert len(openai) == 80 == len(set(openai)) and all("{c}" in t for t in openai)
    assert openai[0] == "a bad photo of a {c}." and read_templates("default") == ["a photo of a {c}."]
    (tmp_path / "t.txt").write_text("a photo of a {c}.\nitap of a {}.\n")
    assert read_templates(tmp_path / "t.txt") == ["a photo of a {c}.", "itap of a {}."]
    (tmp_path / "bad.txt").write_text("a photo of a {c}.\n\na photo of a thing.\n")
    with pytest.raises(ClipforgeError, match=r"bad\.txt: line 3: template 'a photo of a thing\.' has no \{c\}") as e:
        read_templates(tmp_path / "bad.txt")
    one_line(e)
    (tmp_path / "z.json").write_text(json.dumps({"cars": ["a photo of my {c}."], "dtd": ["{c} texture."]}))
    assert read_templates(tmp_path / "z.json", key="dtd") == ["{c} texture."]
    with pytest.raises(ClipforgeError, match="not 'openai', 'default' or an existing file"):
        read_templates(tmp_path / "missing.txt")


# -- zero-shot on a user's labelled CSV -------------------------------------------------------------------


def test_zeroshot_on_user_csv(tmp_path: Path) -> None:
    from clipforge.eval import zeroshot_classification
    from clipforge.models.registry import build

    rows = [[p, c] for p, c in images(tmp_path)]
    f = write_csv(tmp_path / "data.csv", ["path", "category"], rows)
    ds = open_dataset(f, image_key="path", label_key="category")
    model = build("tiny", seed=0)
    got = zeroshot_classification(model, ds, templates=read_templates("default"))
    assert 0.0 <= got["acc1"] <= 1.0
    (tmp_path / "classnames.txt").write_text("\n".join(ds.classnames) + "\n")
    names = read_classnames(tmp_path / "classnames.txt", n_classes=len(ds.classnames))
    assert zeroshot_classification(model, ds, classnames=names, templates=["a photo of a {c}."]) == got
    with pytest.raises(ClipforgeError, match="class label 2, but only 2 class names"):
        zeroshot_classification(model, ds, classnames=names[:2])
