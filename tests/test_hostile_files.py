"""Hostile and corrupt files, through `main(argv)`: TorchScript archives are read as data (their code never
runs), corrupt learngene directories and non-finite weights are one line naming the file, nothing written."""

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_convert_openai import HEADS, make_openai_sd, save_torchscript_archive
from torch import Tensor, nn

from clipforge.cli import main
from clipforge.errors import ClipforgeError
from clipforge.learngene import Learngene, LearngeneConfig
from clipforge.models.checkpoint_files import read_state_dict
from clipforge.models.convert_openai import hf_to_openai
from clipforge.models.io import load, save
from clipforge.models.registry import build

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning")]


def one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """The single stderr line of a refused command; asserts it is one line naming every needle."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipforge: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------- TorchScript


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.register_buffer("low", torch.linspace(-1, 1, 5).half())
        self.register_buffer("scratch", torch.ones(2), persistent=False)  # TorchScript keeps it in state_dict
        self.plain = torch.full((2,), 7.0)  # a plain tensor attribute: not in state_dict

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) + self.low.float().sum() + self.scratch.sum() + self.plain.sum()


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.inner = Inner()
        self.head = nn.Sequential(nn.Linear(4, 2, bias=False), nn.ReLU())
        self.count = 3

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.inner(x) * self.scale)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_read_equals_jit_load(tmp_path: Path, how: str) -> None:
    torch.manual_seed(0)
    module = Outer()
    ts = torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.randn(1, 3))
    path = tmp_path / "small.pt"
    torch.jit.save(ts, str(path))
    want = torch.jit.load(str(path), map_location="cpu").state_dict()
    got = read_state_dict(path)
    assert list(got) == list(want)  # same names, same order
    assert "inner.plain" not in got and "inner.scratch" in got
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def openai_archive(path: Path) -> dict[str, Tensor]:
    """An OpenAI-layout TorchScript archive (as OpenAI's `.pt` releases are) at `path`; returns its tensors."""
    sd = make_openai_sd()
    save_torchscript_archive(sd, path)
    return sd


def test_openai_torchscript_archive_imports(tmp_path: Path) -> None:
    sd = openai_archive(tmp_path / "ViT-toy.pt")
    out = tmp_path / "imported"
    assert main(["import", str(tmp_path / "ViT-toy.pt"), "--out", str(out), "--vision-heads",
                 str(HEADS["vision_heads"]), "--text-heads", str(HEADS["text_heads"])]) == 0
    back = hf_to_openai(load(out))
    for key, value in back.items():
        assert torch.equal(value, sd[key].float()), key


class SetsItself(nn.Module):
    """`torch.jit.load` runs `__setstate__`: it would print a marker and add 42 to the buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.arange(3.0))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.w.sum()

    @torch.jit.export
    def __getstate__(self) -> tuple[Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[Tensor, bool]) -> None:
        print("CLIPFORGE-HOSTILE-SETSTATE")
        self.w = state[0] + 42.0
        self.training = state[1]


class WithSetState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.evil = SetsItself()

    def forward(self, x: Tensor) -> Tensor:
        return self.evil(self.lin(x))


class Hook:
    """A plain TorchScript class whose `__setstate__` overwrites a parameter it shares storage with."""

    def __init__(self, t: Tensor) -> None:
        self.t = t

    def __getstate__(self) -> tuple[Tensor, int]:
        return (self.t, 0)

    def __setstate__(self, state: tuple[Tensor, int]) -> None:
        print("CLIPFORGE-HOSTILE-SETSTATE")
        state[0].detach().fill_(42.0)
        self.t = state[0]


class WithHook(nn.Module):
    hook: Hook  # a real class, not a string: TorchScript reads this annotation (no `from __future__` here)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.hook = Hook(self.lin.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) + self.hook.t.sum()


@pytest.mark.parametrize("module_cls, key", [(WithSetState, "evil.w"), (WithHook, "lin.weight")])
def test_torchscript_setstate_never_runs(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                         module_cls: type[nn.Module], key: str) -> None:
    module = module_cls()
    saved = module.state_dict()[key].clone()
    path = tmp_path / "hostile.pt"
    torch.jit.script(module).save(str(path))
    # The archive is genuinely hostile: loading it the TorchScript way runs its code (a print, new values).
    capfd.readouterr()
    loaded = torch.jit.load(str(path)).state_dict()[key]
    assert "CLIPFORGE-HOSTILE-SETSTATE" in capfd.readouterr().out
    assert not torch.equal(loaded, saved)
    out = tmp_path / "out"
    assert main(["import", str(path), "--out", str(out)]) == 2
    captured = capfd.readouterr()
    assert "CLIPFORGE-HOSTILE-SETSTATE" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipforge: error: "), lines
    for needle in ("hostile.pt", "__setstate__", "torch.save(torch.jit.load(p).state_dict()"):
        assert needle in lines[0]
    assert not out.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torchscript_data_pkl_with_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(good))
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps({"weight": _Payload(marker)}, protocol=2)
            dst.writestr(info, data)
    with pytest.raises(ClipforgeError, match=r"evil\.pt.*system") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value) and not marker.exists()
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "evil.pt")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_truncated_torchscript_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.pt"
    torch.jit.script(Outer()).save(str(good))
    path = tmp_path / "cut.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("/data/0") else data)
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "cut.pt", "data/0")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- learngenes


def tiny_learngene_config() -> LearngeneConfig:
    return LearngeneConfig(width=32, heads=2, mlp=64, act="gelu", image_size=32, patch_size=8, context=16,
                           projection_dim=32, aux_depth_vision=2, aux_depth_text=2)


def _set_nan(weights: Path) -> None:
    """One NaN in the first tensor by name (the test names it back from the file)."""
    tensors = load_file(str(weights))
    key = min(tensors)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "clipforge.learngene/1"})


def _edit_meta(d: Path, edit) -> None:
    meta = json.loads((d / "learngene.json").read_text())
    edit(meta)
    (d / "learngene.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def learngene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Learngene(tiny_learngene_config(), seed=0).save(tmp_path_factory.mktemp("lg") / "good")


CORRUPTIONS = {
    "bad_json": ("learngene.json", "not valid JSON", lambda d: (d / "learngene.json").write_text("{not json")),
    "no_config": ("learngene.json", "'config'", lambda d: _edit_meta(d, lambda m: m.pop("config"))),
    "wrong_type": ("learngene.json", "'vision_width' must be an integer",
                   lambda d: _edit_meta(d, lambda m: m["config"].update(vision_width="wide"))),
    "bool_size": ("learngene.json", "'text_heads' must be an integer",
                  lambda d: _edit_meta(d, lambda m: m["config"].update(text_heads=True))),
    "truncated": ("learngene.safetensors", "not a readable safetensors file",
                  lambda d: (d / "learngene.safetensors").write_bytes(
                      (d / "learngene.safetensors").read_bytes()[: (d / "learngene.safetensors").stat().st_size // 2])),
    "nan": ("learngene.safetensors", "NaN or inf", lambda d: _set_nan(d / "learngene.safetensors")),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_learngene_is_one_line(learngene_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       case: str) -> None:
    culprit, what, edit = CORRUPTIONS[case]
    d = tmp_path / case
    d.mkdir()
    for f in learngene_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    edit(d)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["learngene", "descend", "--learngene", str(d), "--shape", "clip:1", "--out", str(out)]) == 2
    line = one_error_line(capsys, str(d / culprit), what)
    if case == "nan":
        assert repr(min(load_file(str(d / culprit)))) in line  # the tensor is named
    assert not out.exists()


def test_learngene_round_trip_still_loads(learngene_dir: Path) -> None:
    lg = Learngene.load(learngene_dir)
    assert lg.config == tiny_learngene_config()


# ----------------------------------------------------------------------------------------------- non-finite models


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = save(build("tiny", seed=0), tmp_path_factory.mktemp("nan") / "model")
    key = "text_model.final_layer_norm.weight"
    tensors = load_file(str(d / "model.safetensors"))
    tensors[key] = tensors[key].clone()
    tensors[key][1] = float("inf")
    tensors[key][2] = float("nan")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d, key


@pytest.mark.parametrize("command", ["info", "train"])
def test_nonfinite_model_is_refused(nan_model: tuple[Path, str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], command: str) -> None:
    d, key = nan_model
    out = tmp_path / "out"
    argv = (["info", str(d)] if command == "info" else
            ["train", "--model", str(d), "--data", "scenes", "--steps", "1", "--batch-size", "4", "--workers", "0",
             "--out", str(out)])
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, str(d / "model.safetensors"), repr(key), "NaN or inf")
    assert not out.exists()


def test_finite_model_still_loads(tmp_path: Path) -> None:
    d = save(build("tiny", seed=0), tmp_path / "model")
    assert load(d) is not None
