"""Bad input, table-driven through `main(argv)`: exit 2, one line on stderr naming the culprit, no traceback,
nothing written, nothing unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipforge.cli import main
from clipforge.models.io import save
from clipforge.models.registry import build

TRAIN = ["train", "--model", "tiny", "--data", "scenes", "--steps", "2", "--batch-size", "8", "--workers", "0"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of broken inputs (built once)."""
    root = tmp_path_factory.mktemp("bad")
    good = save(build("tiny", seed=0), root / "good")
    for name, edit in {
        "no_config": lambda d: (d / "config.json").unlink(),
        "bad_json": lambda d: (d / "config.json").write_text("{not json"),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
        "other_type": lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert",
                                                                           "architectures": ["BertModel"]})),
        "bad_value": lambda d: (d / "config.json").write_text(json.dumps(
            {**json.loads((d / "config.json").read_text()), "projection_dim": "wide"})),
    }.items():
        d = root / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        edit(d)
    marker = root / "PWNED"
    torch.save({"state_dict": _Evil(marker)}, root / "evil.pt")
    (root / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "imgs" / f"{i}.png")
    (root / "latin1.csv").write_bytes(b"image,caption\nimgs/0.png,caf\xe9\nimgs/1.png,ok\n")
    (root / "broken.jsonl").write_text('{"image": "imgs/0.png", "caption": "a"}\n{"image": "imgs/1.png", \n')
    (root / "nocap.csv").write_text("image,text\nimgs/0.png,a\n")
    (root / "labels.csv").write_text("image,label\nimgs/0.png,3\n")
    (root / "afile").write_text("not a directory")
    return root


def _probes(ws: Path) -> list[tuple[str, list[str], str]]:
    out = str(ws / "out")
    return [
        ("steps negative", [*TRAIN, "--steps", "-5", "--out", out], "--steps"),
        ("batch over dataset", [*TRAIN[:4], str(ws / "nocap.csv"), *TRAIN[5:], "--caption-key", "text",
                                "--batch-size", "64", "--out", out], "--batch-size"),
        ("lr zero", [*TRAIN, "--lr", "0", "--out", out], "--lr"),
        ("warmup negative", [*TRAIN, "--warmup", "-1", "--out", out], "--warmup"),
        ("resume pickled code", [*TRAIN, "--resume", str(ws / "evil.pt"), "--out", out], "evil.pt"),
        ("resume missing", [*TRAIN, "--resume", str(ws / "nope.pt"), "--out", out], "nope.pt"),
        ("unknown architecture", [*TRAIN[:2], "no-such-arch", *TRAIN[3:], "--out", out], "no-such-arch"),
        ("unknown dataset", [*TRAIN[:4], "imagenet", *TRAIN[5:], "--out", out], "imagenet"),
        ("missing data file", [*TRAIN[:4], str(ws / "missing.csv"), *TRAIN[5:], "--out", out], "missing.csv"),
        ("non-UTF-8 caption", [*TRAIN[:4], str(ws / "latin1.csv"), *TRAIN[5:], "--on-error", "raise",
                               "--out", out], "latin1.csv"),
        ("malformed JSONL", [*TRAIN[:4], str(ws / "broken.jsonl"), *TRAIN[5:], "--on-error", "raise",
                             "--out", out], "broken.jsonl"),
        ("missing caption column", [*TRAIN[:4], str(ws / "labels.csv"), *TRAIN[5:], "--out", out], "caption"),
        ("out is a file", [*TRAIN, "--out", str(ws / "afile")], "afile"),
        ("unknown flag", [*TRAIN, "--bogus", "--out", out], "--bogus"),
        ("bad choice", ["eval", "--model", str(ws / "good"), "--task", "bogus"], "--task"),
        ("info missing dir", ["info", str(ws / "nothing")], "nothing"),
        ("info no config", ["info", str(ws / "no_config")], "config.json"),
        ("info bad json", ["info", str(ws / "bad_json")], "config.json"),
        ("info no weights", ["info", str(ws / "no_weights")], "weights"),
        ("info truncated weights", ["info", str(ws / "truncated")], "truncated"),
        ("info other model type", ["info", str(ws / "other_type")], "BertModel"),
        ("info bad config value", ["info", str(ws / "bad_value")], "projection_dim"),
        ("import pickled code", ["import", str(ws / "evil.pt"), "--out", out], "evil.pt"),
        ("import missing", ["import", str(ws / "missing.pt"), "--out", out], "missing.pt"),
        ("dmu base not a model", ["moe", "dmu", "--base", str(ws / "imgs"), "--data", "scenes", "--out", out],
         "imgs"),
        ("extract ancestry missing", ["learngene", "extract", "--ancestry", str(ws / "nothing"), "--out", out],
         "nothing"),
        ("eval limit negative", ["eval", "--model", str(ws / "good"), "--task", "retrieval", "--limit", "-3"],
         "--limit"),
        ("export not a model", ["export", str(ws / "imgs"), "--format", "torch-export", "--out", out], "imgs"),
        ("stretch bad keep", ["stretch", str(ws / "good"), "--out", out, "--keep", "99"], "keep"),
    ]


def test_every_bad_input_gets_one_line_and_writes_nothing(ws, capsys):
    probes = _probes(ws)
    assert len(probes) >= 25
    before = sorted(str(p) for p in ws.rglob("*"))
    failures = []
    for name, argv, culprit in probes:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors exit through SystemExit
            code = e.code
        err = capsys.readouterr().err.strip()
        lines = err.splitlines()
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("clipforge: error: ")
              and culprit in lines[0] and "Traceback" not in err)
        if not ok:
            failures.append(f"{name}: code {code}, stderr {err[:300]!r}")
        after = sorted(str(p) for p in ws.rglob("*"))
        if after != before:
            failures.append(f"{name}: wrote {sorted(set(after) - set(before))[:3]}")
            before = after
    assert not (ws / "PWNED").exists(), "pickled code ran"
    assert not failures, "\n".join(failures)


# --- the --out rule, for every command that writes ---------------------------------------------------

@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    """A folder of the user's files, a folder holding the input model, a learngene, a checkpoint."""
    from clipforge.learngene.config import LearngeneConfig
    from clipforge.learngene.learngene import Learngene
    from clipforge.models.convert_openai import save_openai

    root = tmp_path_factory.mktemp("outs")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's own file")
    model = save(build("tiny", seed=0), root / "holder" / "model")
    lg_anc = build("tiny", seed=1)
    Learngene(LearngeneConfig.from_ancestry(lg_anc.config), ancestry=lg_anc).save(root / "lgholder" / "lg")
    (root / "ckholder").mkdir()
    save_openai(build("tiny", seed=2), root / "ckholder" / "ck.pt")  # a checkpoint in the OpenAI layout
    from clipforge.moe.pack import pack

    save(pack([str(model), str(model)], top_k=1), root / "moeholder" / "moe")
    assert (model / "config.json").is_file()
    return root


def _writers(root: Path) -> list[tuple[str, list[str], Path | None]]:
    """(name, argv without --out, the input that --out must never be / hold / lie inside)."""
    m, lg, ck = root / "holder" / "model", root / "lgholder" / "lg", root / "ckholder" / "ck.pt"
    moe = root / "moeholder" / "moe"
    tiny_data = ["--data", "scenes", "--scenes-size", "16", "--workers", "0"]
    return [
        ("build", ["build", "tiny"], None),
        ("import", ["import", str(ck), "--vision-heads", "2", "--text-heads", "2"], ck),
        ("stretch", ["stretch", str(m), "--keep", "4"], m),
        ("export", ["export", str(m), "--format", "torch-export"], m),
        ("train", ["train", "--model", str(m), "--data", "scenes", "--steps", "1", "--batch-size", "4",
                   "--workers", "0"], m),
        ("ancestry", ["ancestry", "--quick"], None),
        ("moe dmu", ["moe", "dmu", "--model", str(m), *tiny_data, "--preset", "quick", "--no-eval"], m),
        ("moe stage", ["moe", "stage", "--model", str(m), *tiny_data, "--preset", "quick"], m),
        ("moe pack", ["moe", "pack", "--stage", str(m), "--stage", str(m)], m),
        ("moe route", ["moe", "route", "--model", str(moe), *tiny_data, "--preset", "quick"], moe),
        ("moe baseline", ["moe", "baseline", "direct-ft", "--model", str(m), *tiny_data, "--steps", "1",
                          "--batch-size", "4"], m),
        ("moe stats", ["moe", "stats", "--model", str(moe), "--samples", "4"], moe),
        ("learngene extract", ["learngene", "extract", "--model", str(m), "--steps", "1", "--batch-size", "4",
                               "--eval-scenes", "0", "--workers", "0"], m),
        ("learngene descend", ["learngene", "descend", "--learngene", str(lg), "--shape", "clip:1"], lg),
        ("demo", ["demo", "--quick", "--ancestry", str(root / "no-ancestry-here")], None),
    ]


def _out_probes(root: Path) -> list[tuple[str, list[str], str]]:
    probes = []
    for name, argv, src in _writers(root):
        mine = root / "mine"
        probes.append((f"{name}: --out a folder of the user's files", [*argv, "--out", str(mine)], str(mine)))
        if src is not None:
            probes.append((f"{name}: --out the input itself", [*argv, "--out", str(src)], str(src)))
            probes.append((f"{name}: --out the folder holding the input", [*argv, "--out", str(src.parent)],
                           str(src.parent)))
    m = str(root / "holder" / "model")
    probes.append(("pack one stage", ["moe", "pack", "--stage", m, "--out", str(root / "p")], "--stage"))
    probes.append(("pack top-k above stages", ["moe", "pack", "--stage", m, "--stage", m, "--top-k", "3",
                                                "--out", str(root / "p")], "--top-k"))
    probes.append(("eval: --out a file eval did not write", ["eval", "--model", str(root / "holder" / "model"),
                   "--task", "retrieval", "--limit", "8", "--out", str(root / "mine" / "notes.txt")], "notes.txt"))
    return probes


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_never_lands_on_the_users_files_or_the_inputs(outs, capsys):
    probes = _out_probes(outs)
    assert len(probes) >= 30
    before, failures = _tree(outs), []
    for name, argv, culprit in probes:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        lines = err.splitlines()
        if not (code == 2 and len(lines) == 1 and lines[0].startswith("clipforge: error: ") and culprit in lines[0]):
            failures.append(f"{name}: code {code}, stderr {err[-300:]!r}")
        after = _tree(outs)
        if after != before:
            failures.append(f"{name}: changed {sorted(set(after) ^ set(before))[:3] or 'file contents'}")
            before = after
    assert not failures, "\n".join(failures)
