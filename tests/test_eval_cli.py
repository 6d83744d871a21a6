"""`clipforge eval` on a user's own pairs, with their column names, on the device asked for."""

from __future__ import annotations

import json

from PIL import Image

from clipforge.cli import main
from clipforge.models.io import save
from clipforge.models.registry import build


def test_eval_reads_custom_columns_on_the_device_asked(tmp_path, capsys):
    model = tmp_path / "m"
    save(build("tiny", seed=0), model)
    rows = ["picture,text"]
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(model), "--task", "retrieval", "--data", str(tmp_path / "pairs.csv"),
                 "--image-key", "picture", "--caption-key", "text", "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 <= metrics["image_retrieval_recall@1"] <= 1
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--task", "retrieval", "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:7" in err[0]
    assert main(["eval", "--model", str(model), "--task", "retrieval", "--device", "tpu9"]) == 2


def _labelled(tmp_path, with_captions: bool = True):
    tmp_path.mkdir(exist_ok=True)
    rows = ["picture,text,category" if with_captions else "picture,category"]
    for i, colour in enumerate(["red", "green", "blue", "red", "green", "blue"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square,{colour}" if with_captions else f"{i}.png,{colour}")
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labelled.csv"


def test_zeroshot_on_the_users_labelled_data_with_their_classnames_and_templates(tmp_path, capsys):
    model = tmp_path / "m"
    save(build("tiny", seed=0), model)
    data = _labelled(tmp_path, with_captions=False)
    base = ["eval", "--model", str(model), "--task", "zeroshot", "--data", str(data), "--image-key", "picture",
            "--device", "cpu"]
    out = tmp_path / "zs.json"
    assert main([*base, "--label-key", "category", "--templates", "openai", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 <= metrics["acc1"] <= 1 and "mean_per_class_recall" in metrics
    # the user's class names (CLIP_benchmark's one-per-line format, in label order: blue, green, red)
    (tmp_path / "names.txt").write_text("a blue thing\na green thing\na red thing\n")
    assert main([*base, "--label-key", "category", "--classnames", str(tmp_path / "names.txt")]) == 0
    capsys.readouterr()
    (tmp_path / "two.txt").write_text("blue\ngreen\n")
    (tmp_path / "bad.txt").write_text("a photo of a thing\n")
    for extra, says in ((["--label-key", "category", "--classnames", str(tmp_path / "two.txt")], "2 class names"),
                        (["--label-key", "category", "--templates", str(tmp_path / "bad.txt")], "no {c}"),
                        (["--label-key", "colour"], "no label column 'colour'")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    captioned = _labelled(tmp_path / "captioned", with_captions=True)  # pairs, but no label column named
    for spec, extra in ((captioned, ["--caption-key", "text"]), (data, [])):  # no --label-key: said first
        assert main([*base[:6], str(spec), *base[7:], *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs its class labels" in err[0] and "--label-key" in err[0], err


def test_training_on_labels_without_captions_is_refused_in_one_line(tmp_path, capsys):
    data = _labelled(tmp_path, with_captions=False)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", str(data), "--image-key", "picture", "--label-key", "category",
                 "--out", str(out), "--steps", "1", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no caption column 'caption'" in err[0] and "--caption-key" in err[0]
    assert not out.exists()
