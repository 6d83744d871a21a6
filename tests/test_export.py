"""`clipforge export`: ONNX and torch.export artefacts of dense, descendant and CLIP-MoE towers."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from clipforge.cli import main
from clipforge.learngene import Learngene, LearngeneConfig, descend
from clipforge.models import io
from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel
from clipforge.models.clip_moe.moe_layer import MoEFFN, dense_dispatch
from clipforge.models.encode import image_features, text_features
from clipforge.models.export import example_inputs, run_artefact
from clipforge.models.registry import build, make_config

TOL = 1e-5
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_ONNX = all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxscript not installed (pip install 'clipforge[export]')")


def _moe_model(seed: int = 0) -> CLIPMoEModel:
    cfg = CLIPMoEConfig.from_dense(make_config("tiny"), expert_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPMoEModel(cfg).eval()
        for m in model.modules():
            if isinstance(m, MoEFFN):  # peaky routers: the experts chosen differ from token to token
                m.router.weight.data.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    io.save(build("tiny", seed=1), root / "dense", provenance={"source": "test"})
    io.save(_moe_model(), root / "moe", provenance={"source": "test"})
    cfg = LearngeneConfig(width=32, heads=2, mlp=64, act="gelu", image_size=32, patch_size=8, context=16,
                          projection_dim=32, aux_depth_vision=2, aux_depth_text=2)
    io.save(descend(Learngene(cfg, seed=0), 3, None, kind="vision"), root / "child", provenance={"source": "test"})
    return root


def _reference(model_dir, tower: str, inputs: dict) -> torch.Tensor:
    model = io.load(model_dir)  # its ordinary forward: the sparse dispatch for a CLIP-MoE
    with torch.no_grad():
        return image_features(model, **inputs) if tower == "vision" else text_features(model, **inputs)


def _check_export(model_dir, out, fmt: str, towers: list[str]) -> None:
    manifest = json.loads((out / "export.json").read_text())
    assert sorted(manifest["towers"]) == sorted(towers)
    model = io.load(model_dir)
    for tower in towers:
        entry = manifest["towers"][tower]
        path = out / entry["file"]
        assert path.suffix == (".onnx" if fmt == "onnx" else ".pt2")
        inputs = example_inputs(model, tower, batch=5, seed=7)  # a batch size neither export nor its check used
        got = run_artefact(path, inputs)
        if got is None:
            pytest.skip("onnxruntime is not installed: the ONNX file was written but cannot be run here")
        want = _reference(model_dir, tower, inputs)
        assert got.shape == want.shape == (5, 32)
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)
        assert entry["check"]["max_abs_diff"] <= TOL


# --------------------------------------------------------------------------------- dense dispatch


@pytest.mark.parametrize("top_k", [1, 2])
def test_dense_dispatch_equals_sparse(top_k):
    torch.manual_seed(0)
    ffn = MoEFFN(make_config("tiny").vision_config, num_experts=4, top_k=top_k).eval()
    ffn.router.weight.data.mul_(6.0)
    h = torch.randn(3, 7, 32)
    mask = torch.rand(3, 7) > 0.3
    with torch.no_grad():
        for m in (None, mask):
            sparse, logits = ffn(h, m)
            ffn.dispatch = "dense"
            dense, dense_logits = ffn(h, m)
            ffn.dispatch = "sparse"
            torch.testing.assert_close(dense, sparse, rtol=0, atol=TOL)
            torch.testing.assert_close(dense_logits, logits, rtol=0, atol=0)
    assert (dense[~mask] == 0).all()  # skipped tokens get a zero FFN output, as in the sparse path
    # The routing mattered: more than one expert was used.
    assert logits.argmax(-1).unique().numel() > 1


def test_dense_dispatch_context_restores_and_refuses_unknown_modes():
    model = _moe_model()
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    layers[0].dispatch = "dense"  # a mode set by hand is restored too
    with dense_dispatch(model):
        assert all(m.dispatch == "dense" for m in layers)
    assert [m.dispatch for m in layers] == ["dense"] + ["sparse"] * (len(layers) - 1)
    layers[0].dispatch = "fast"
    with pytest.raises(ValueError, match="dispatch"):
        layers[0](torch.randn(1, 2, 32))


def test_sparse_dispatch_fails_under_torch_export_and_dense_exports():
    """The reason the exporter switches dispatch: the sparse path's slice sizes come from the data."""
    torch.manual_seed(0)
    ffn = MoEFFN(make_config("tiny").vision_config, num_experts=4, top_k=2).eval()
    h = torch.randn(2, 5, 32)
    with pytest.raises(Exception, match="(?i)data.dependent|guard"):
        torch.export.export(ffn, (h,), strict=False)
    ffn.dispatch = "dense"
    program = torch.export.export(ffn, (h,), strict=False)
    ffn.dispatch = "sparse"
    with torch.no_grad():
        torch.testing.assert_close(program.module()(h)[0], ffn(h)[0], rtol=0, atol=TOL)


# ------------------------------------------------------------------------------------------ the CLI


# Each export costs seconds (torch.export tracing, ONNX translation), so the cases are chosen to cover
# each tower of a dense and of an MoE model once and each format on both kinds, no more: with the
# descendant test below (dense vision through torch.export) that is all four pairs.
@pytest.mark.parametrize("kind,fmt,tower", [
    ("moe", "torch-export", "text"),
    pytest.param("dense", "onnx", "text", marks=needs_onnx),
    pytest.param("moe", "onnx", "vision", marks=needs_onnx),
])
def test_export_matches_pytorch(dirs, tmp_path, capsys, kind, fmt, tower):
    out = tmp_path / "out"
    assert main(["export", str(dirs / kind), "--format", fmt, "--out", str(out), "--tower", tower]) == 0
    printed = capsys.readouterr().out
    towers = ["vision", "text"] if tower == "both" else [tower]
    assert all(f"{t}: " in printed for t in towers)
    assert ("dense" in printed) == (kind == "moe")  # the MoE dispatch is said
    assert (out / "preprocessor_config.json").is_file()  # the pipeline travels with the artefacts
    _check_export(dirs / kind, out, fmt, towers)


def test_descendant_tower_exports_and_default_out(dirs):
    assert main(["export", str(dirs / "child"), "--format", "torch-export"]) == 0
    out = dirs / "child-torch-export"
    _check_export(dirs / "child", out, "torch-export", ["vision"])  # a vision-only model: one tower
    assert json.loads((dirs / "child" / "config.json").read_text())["num_hidden_layers"] == 3  # not the ancestry's 2


@pytest.mark.parametrize("argv,message", [
    (["export", "{root}/nowhere", "--format", "onnx"], "no such model directory"),
    (["export", "{root}", "--format", "torch-export"], "config.json"),
    (["export", "{root}/dense", "--format", "tflite"], "unknown export format 'tflite'"),
    (["export", "{root}/child", "--format", "torch-export", "--tower", "text"], "no text tower"),
    (["export", "{root}/dense", "--format", "torch-export", "--tower", "audio"], "--tower"),
    (["export", "{root}/dense", "--format", "torch-export", "--out", "{root}/dense"], "is the input"),
])
def test_bad_input_is_one_line_exit_2(dirs, capsys, argv, message):
    argv = [a.format(root=dirs) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_missing_onnx_package_is_one_line_exit_2(dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import now raises ImportError
    assert main(["export", str(dirs / "dense"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "clipforge[export]" in err and "onnxscript" in err
    assert not (tmp_path / "o").exists()


def test_failed_export_leaves_previous_output_untouched(dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    import clipforge.models.export as export_mod

    def broken(*a, **k):
        raise export_mod.ClipforgeError("simulated failure")

    monkeypatch.setattr(export_mod, "export_tower", broken)
    assert main(["export", str(dirs / "dense"), "--format", "torch-export", "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left behind
