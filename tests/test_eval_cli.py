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
