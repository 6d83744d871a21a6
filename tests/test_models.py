"""Model layer: registry, save/load, plain-transformers loading, bad input, timm-style checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import fake_batch
from safetensors.torch import load_file, save_file

from clipforge.cli import main
from clipforge.errors import ClipforgeError
from clipforge.models.encode import image_features, text_features
from clipforge.models.io import load, save
from clipforge.models.registry import build, list_models, make_config


def _embed(model, pixels, ids):
    out = {}
    if hasattr(model, "vision_model"):
        out["image"] = image_features(model, pixels)
    if hasattr(model, "text_model"):
        out["text"] = text_features(model, ids)
    return out


def test_registry_lists_real_shapes():
    names = list_models()
    for n in ("tiny", "ancestry", "ViT-B-32", "ViT-B-16", "ViT-L-14"):
        assert n in names
    b32 = make_config("ViT-B-32")
    assert b32.vision_config.hidden_act == "quick_gelu" and b32.vision_config.patch_size == 32
    assert make_config("ViT-L-14").vision_config.num_hidden_layers == 24
    anc = make_config("ancestry")
    assert anc.vision_config.num_hidden_layers >= 8 and anc.text_config.num_hidden_layers >= 8
    # shaped like the real CLIPs: the vision tower wider (ViT-B 768/512, L/14 1024/768), one head size
    v, t = anc.vision_config, anc.text_config
    assert 1.33 <= v.hidden_size / t.hidden_size <= 1.5
    assert v.hidden_size // v.num_attention_heads == t.hidden_size // t.num_attention_heads
    assert (v.intermediate_size, t.intermediate_size) == (4 * v.hidden_size, 4 * t.hidden_size)


def test_build_is_seeded():
    a, b, c = build("tiny", seed=1), build("tiny", seed=1), build("tiny", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("kind", ["clip", "vision", "text"])
def test_save_load_roundtrip(tmp_path, kind):
    model = build("tiny", seed=0, kind=kind)
    save(model, tmp_path / "m", provenance={"source": "test"})
    for f in ("config.json", "model.safetensors", "README.md", "clipforge.json"):
        assert (tmp_path / "m" / f).is_file()
    assert (tmp_path / "m" / "vocab.json").is_file() == (kind != "vision")
    assert (tmp_path / "m" / "preprocessor_config.json").is_file() == (kind != "text")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Parameters" in card and "source: test" in card
    back = load(tmp_path / "m")
    assert type(back) is type(model)
    pixels, ids = fake_batch()
    a, b = _embed(model, pixels, ids), _embed(back, pixels, ids)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clip", "vision", "text"])
def test_plain_transformers_loads_saved_model(tmp_path, kind):
    """A process that never imports clipforge loads the directory with transformers alone."""
    model = build("tiny", seed=3, kind=kind)
    save(model, tmp_path / "m")
    pixels, ids = fake_batch(seed=5)
    save_file({"pixels": pixels, "ids": ids}, str(tmp_path / "inputs.safetensors"))
    script = textwrap.dedent(f"""
        import sys, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, CLIPModel, CLIPVisionModelWithProjection, CLIPTextModelWithProjection
        cls = {{"clip": CLIPModel, "vision": CLIPVisionModelWithProjection,
               "text": CLIPTextModelWithProjection}}["{kind}"]
        m = cls.from_pretrained(r"{tmp_path / 'm'}").eval()
        x = load_file(r"{tmp_path / 'inputs.safetensors'}")
        out = {{}}
        with torch.no_grad():
            if "{kind}" == "clip":
                out["image"] = m.get_image_features(pixel_values=x["pixels"]).pooler_output
                out["text"] = m.get_text_features(input_ids=x["ids"]).pooler_output
            elif "{kind}" == "vision":
                out["image"] = m(pixel_values=x["pixels"]).image_embeds
            else:
                out["text"] = m(input_ids=x["ids"]).text_embeds
        save_file(out, r"{tmp_path / 'out.safetensors'}")
        assert "clipforge" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    theirs = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        ours = _embed(model, pixels, ids)
    assert theirs.keys() == ours.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "vision", "text"])
def test_every_trainable_parameter_gets_a_gradient(kind):
    model = build("tiny", seed=0, kind=kind).train()
    pixels, ids = fake_batch()
    loss = sum(v.pow(2).mean() for v in _embed(model, pixels, ids).values())
    if kind == "clip":
        loss = loss + model.logit_scale
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient for {missing}"


def test_gradient_checkpointing_leaves_outputs_unchanged():
    pixels, ids = fake_batch()
    results = []
    for ckpt in (False, True):
        model = build("tiny", seed=0).train()
        if ckpt:
            model.gradient_checkpointing_enable()
        out = _embed(model, pixels, ids)
        (out["image"].square().sum() + out["text"].square().sum()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (o0, g0), (o1, g1) = results
    for k in o0:
        torch.testing.assert_close(o0[k], o1[k], rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-5, atol=1e-6)


# --- bad input: one line that names the culprit, no partial output -------------------------------

def _cli_error(capsys, argv) -> str:
    capsys.readouterr()  # drop what the test's own set-up printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipforge: error: ") and "\n" not in err, err
    return err


def test_missing_config_json(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    with pytest.raises(ClipforgeError, match="config.json"):
        load(tmp_path / "m")
    assert "config.json" in _cli_error(capsys, ["info", str(tmp_path / "m")])


def test_weights_disagree_with_config(tmp_path, capsys):
    save(build("tiny"), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 48
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    err = _cli_error(capsys, ["info", str(tmp_path / "m")])
    assert "fc1.weight" in err and "(64, 32)" in err and "(48, 32)" in err


def test_unknown_architecture_name(tmp_path, capsys):
    err = _cli_error(capsys, ["build", "ViT-Z-99", "--out", str(tmp_path / "m")])
    assert "ViT-Z-99" in err and "tiny" in err
    assert not (tmp_path / "m").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pt_with_pickled_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"visual.proj": torch.zeros(2, 2), "x": _Evil(str(marker))}, tmp_path / "evil.pt")
    err = _cli_error(capsys, ["import", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "out")])
    assert "evil.pt" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model = build("tiny")
    import clipforge.models.io as io

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "model_card", boom)
    with pytest.raises(RuntimeError):
        save(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_cli_build_and_info(tmp_path, capsys):
    assert main(["build", "tiny", "--out", str(tmp_path / "m"), "--seed", "4"]) == 0
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "vision" in out and "text" in out and "random init" in out
    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == sum(p.numel() for p in build("tiny").parameters())
