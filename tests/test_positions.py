"""Long-CLIP's position stretch (77 → 248) and the released code's dense two-table checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPModel

from clipforge.cli import main
from clipforge.errors import ClipforgeError
from clipforge.models.convert_openai import hf_to_openai
from clipforge.models.encode import text_features
from clipforge.models.io import load, save
from clipforge.models.positions import merge_two_tables, stretch_table, stretch_text_positions
from clipforge.models.registry import build, get_config_dict
from clipforge.models.tokenizer import tokenize


def _reference_stretch(P: torch.Tensor) -> torch.Tensor:
    """docs/methods.md A.6 written out index by index (Long-CLIP's loop), for L = 77."""
    out = torch.zeros(248, P.shape[1], dtype=torch.float64)
    P = P.double()
    for i in range(20):
        out[i] = P[i]
    for i in range(56):
        for r in range(4):
            out[20 + 4 * i + r] = (1 - r / 4) * P[20 + i] + (r / 4) * P[21 + i]
    for r in range(4):
        out[244 + r] = P[76] + (r / 4) * (P[76] - P[75])
    return out


def test_stretch_table_matches_the_formula():
    P = torch.randn(77, 12, generator=torch.Generator().manual_seed(0))
    got = stretch_table(P)
    assert got.shape == (248, 12)
    torch.testing.assert_close(got.double(), _reference_stretch(P), rtol=0, atol=1e-6)
    with pytest.raises(ClipforgeError, match="keep"):
        stretch_table(torch.zeros(10, 4), keep=20)


def _clip_with_context(n: int, seed: int = 0):
    spec = get_config_dict("tiny")
    spec["text_config"]["max_position_embeddings"] = n
    return build(spec, seed=seed)


def test_stretched_model_keeps_short_captions_and_reads_long_ones(tmp_path):
    model = _clip_with_context(30)
    long = stretch_text_positions(model, keep=20, factor=4)
    assert long.config.text_config.max_position_embeddings == 20 + 4 * 10
    short = tokenize(["a red square", "two blue circles"], 30)[:, :12]  # every token at a position < 20
    with torch.no_grad():
        torch.testing.assert_close(text_features(long, short), text_features(model, short), rtol=0, atol=1e-6)
    out = save(long, tmp_path / "long")
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 60
    ids = tokenize(["word " * 50], 60)
    theirs = CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(text_features(load(out), ids), theirs.get_text_features(ids).pooler_output,
                                   rtol=0, atol=1e-5)


def test_stretch_cli(tmp_path, capsys):
    src = save(_clip_with_context(30), tmp_path / "m")
    assert main(["stretch", str(src), "--out", str(tmp_path / "s")]) == 0
    assert load(tmp_path / "s").config.text_config.max_position_embeddings == 60
    assert main(["stretch", str(src), "--out", str(tmp_path / "bad"), "--keep", "40"]) == 2
    assert "keep" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_released_dense_stage_checkpoint_imports_with_merged_tables(tmp_path):
    model = _clip_with_context(30, seed=1)
    sd = hf_to_openai(model)
    res = torch.randn_like(sd["positional_embedding"])
    sd["positional_embedding_res"] = res
    torch.save(sd, tmp_path / "stage1.pt")
    assert main(["import", str(tmp_path / "stage1.pt"), "--out", str(tmp_path / "out"), "--act", "gelu",
                 "--vision-heads", "2", "--text-heads", "2"]) == 0
    got = load(tmp_path / "out")
    assert type(got) is CLIPModel
    table = got.text_model.embeddings.position_embedding.weight
    assert torch.equal(table[:20], sd["positional_embedding"][:20]) and torch.equal(table[20:], res[20:])
    assert torch.equal(merge_two_tables(sd["positional_embedding"], res), table)
    # every other tensor is the model's own
    for k, v in model.state_dict().items():
        if "position_embedding" not in k:
            assert torch.equal(got.state_dict()[k], v), k
