"""A CLIP-MoE directory saved before the model moved to `clipforge.models.clip_moe` still loads, with clipforge
and with plain transformers through its shipped code, and gives the embeddings it gave when it was saved."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "clip_moe_saved_v1"
EXPECTED = load_file(str(FIXTURE.parent / "clip_moe_saved_v1_expected.safetensors"))


def _embeds(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        img = model.get_image_features(pixel_values=EXPECTED["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=EXPECTED["input_ids"],
                                      attention_mask=EXPECTED["attention_mask"]).pooler_output
    return img, txt


def test_clipforge_loads_the_old_directory_with_the_same_embeddings():
    from clipforge.models import io

    model = io.load(FIXTURE).eval()
    assert type(model).__name__ == "CLIPMoEModel" and model.config.num_experts == 2
    img, txt = _embeds(model)
    # To float rounding, not bit for bit: the expected embeddings were computed on another machine, and CPUs of
    # kinds differ in their kernels' last bits (docs/design.md 5, "not across machines").
    assert torch.allclose(img, EXPECTED["image_embeds"], atol=1e-6)
    assert torch.allclose(txt, EXPECTED["text_embeds"], atol=1e-6)


def test_plain_transformers_loads_it_through_its_shipped_code(tmp_path):
    from transformers import AutoModel

    auto_map = json.loads((FIXTURE / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_clip_moe.CLIPMoEModel"  # the names saved directories ship
    model = AutoModel.from_pretrained(FIXTURE, trust_remote_code=True).eval()
    img, txt = _embeds(model)
    assert torch.allclose(img, EXPECTED["image_embeds"], atol=1e-6)
    assert torch.allclose(txt, EXPECTED["text_embeds"], atol=1e-6)
