"""What clipforge writes, the ecosystem loads: a CLIP-MoE with plain transformers (no clipforge), processors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import fake_batch
from transformers import AutoProcessor, CLIPProcessor, CLIPTokenizer

from clipforge.models.clip_moe.remote import SHIPPED, shipped_source
from clipforge.models.encode import image_features, text_features
from clipforge.models.io import save
from clipforge.models.registry import build
from clipforge.moe.pack import upcycle

# Runs in a fresh interpreter where importing clipforge is impossible.
_NO_CLIPFORGE = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "clipforge" or name.startswith("clipforge."):
            raise ImportError("clipforge is blocked in this process")
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory) -> Path:
    moe = upcycle(build("tiny", seed=3), num_experts=3, top_k=2, moe_layers_vision=[1])
    with torch.no_grad():  # make the experts differ, so routing matters
        for p in moe.vision_model.encoder.layers[1].mlp.experts[2].parameters():
            p.add_(0.05)
    return save(moe, tmp_path_factory.mktemp("moe") / "model")


@pytest.mark.slow
def test_moe_loads_with_trust_remote_code_without_clipforge(moe_dir, tmp_path):
    from clipforge.models.io import load

    cfg = json.loads((moe_dir / "config.json").read_text())
    assert cfg["auto_map"]["AutoModel"] == "modeling_clip_moe.CLIPMoEModel"
    pixels, ids = fake_batch(3)
    torch.save({"pixels": pixels, "ids": ids}, tmp_path / "batch.pt")
    code = _NO_CLIPFORGE + f"""
import torch
from transformers import AutoModel
try:
    AutoModel.from_pretrained({str(moe_dir)!r})
    raise SystemExit("loaded custom code without trust_remote_code")
except ValueError as e:
    assert "trust_remote_code" in str(e), e
m = AutoModel.from_pretrained({str(moe_dir)!r}, trust_remote_code=True).eval()
assert type(m).__name__ == "CLIPMoEModel" and "clipforge" not in type(m).__module__
assert not any(k.startswith("clipforge") for k in sys.modules)
b = torch.load({str(tmp_path / 'batch.pt')!r})
with torch.no_grad():
    f = m.get_image_features(b["pixels"]).pooler_output, m.get_text_features(b["ids"]).pooler_output
torch.save(f, {str(tmp_path / 'out.pt')!r})
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
    got_i, got_t = torch.load(tmp_path / "out.pt")
    model = load(moe_dir)
    with torch.no_grad():
        torch.testing.assert_close(got_i, image_features(model, pixels), rtol=0, atol=1e-5)
        torch.testing.assert_close(got_t, text_features(model, ids), rtol=0, atol=1e-5)


def test_shipped_code_is_the_package_code_with_sibling_imports():
    for src, (_name, _) in SHIPPED.items():
        text = shipped_source(src)
        assert "from ..models" not in text and "from clipforge" not in text and "import clipforge" not in text
    assert "from .configuration_clip_moe import CLIPMoEConfig" in shipped_source(next(
        s for s, (n, _) in SHIPPED.items() if n == "modeling_clip_moe.py"))


@pytest.mark.parametrize("kind", ["clip", "moe"])
def test_autoprocessor_and_tokenizer_padding_fit_the_model(kind, moe_dir, tmp_path):
    d = moe_dir if kind == "moe" else save(build("tiny", seed=0), tmp_path / "clip")
    proc = AutoProcessor.from_pretrained(d)
    assert isinstance(proc, CLIPProcessor)
    tok = CLIPTokenizer.from_pretrained(d)
    context = json.loads((d / "config.json").read_text())["text_config"]["max_position_embeddings"]
    assert tok.model_max_length == context == 16
    enc = tok(["a red square", "a"], padding="max_length", truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (2, context)
    from PIL import Image

    out = proc(text=["a red square"], images=[Image.new("RGB", (50, 40), "red")], return_tensors="pt",
               padding="max_length")
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["input_ids"].shape == (1, context)


def test_a_directory_tokenizer_that_differs_is_the_one_used(tmp_path):
    """A hub directory with its own vocabulary: clipforge tokenises with it, and saves it onward."""
    from clipforge.models.io import load
    from clipforge.models.tokenizer import get_tokenizer, tokenize, tokenizer_for

    d = save(build("tiny", seed=0), tmp_path / "m")
    vocab = json.loads((d / "vocab.json").read_text())
    vocab["red</w>"], vocab["blue</w>"] = vocab["blue</w>"], vocab["red</w>"]  # a different tokenizer
    (d / "vocab.json").write_text(json.dumps(vocab))
    model = load(d)
    assert tokenizer_for(model) is not get_tokenizer()
    ids_own = tokenize(["red"], 16, tokenizer_for(model))
    assert ids_own[0, 1].item() == get_tokenizer().convert_tokens_to_ids("blue</w>")
    again = load(save(model, tmp_path / "again"))
    assert tokenize(["red"], 16, tokenizer_for(again)).tolist() == ids_own.tolist()
    assert tokenizer_for(load(save(build("tiny"), tmp_path / "plain"))) is get_tokenizer()
