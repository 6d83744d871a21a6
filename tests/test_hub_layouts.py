"""CLIP directories as the Hugging Face hub publishes them load in clipforge, with transformers' embeddings.

Each layout is built here the way the hub's OpenAI CLIPs are laid out (nothing is downloaded): legacy
config fields (`text_config_dict`, `eos_token_id: 2`), stored `position_ids` buffers, `pytorch_model.bin`
only, sharded safetensors with an index, fp16 weights; each with the hub's tokenizer and preprocessor files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import fake_batch
from safetensors.torch import save_file
from transformers import CLIPModel

from clipforge.cli import main
from clipforge.models.captions import caption_end, caption_mask
from clipforge.models.encode import image_features, text_features
from clipforge.models.io import load
from clipforge.models.registry import build
from clipforge.models.tokenizer import save_tokenizer, tokenize

LAYOUTS = ("legacy", "bin", "sharded", "fp16")


def _hub_preprocessor(d: Path, size: int) -> None:
    """The hub's old-style `preprocessor_config.json` (integer sizes, feature-extractor names)."""
    (d / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": size}))


def _legacy_config(model: CLIPModel) -> dict:
    cfg = model.config.to_dict()
    cfg["text_config_dict"], cfg["vision_config_dict"] = cfg.pop("text_config"), cfg.pop("vision_config")
    cfg["text_config_dict"].update(eos_token_id=2, bos_token_id=0, pad_token_id=1)
    cfg["transformers_version"] = "4.21.0.dev0"
    return cfg


def make_hub_dir(root: Path, layout: str, seed: int = 0) -> Path:
    """A tiny CLIP written in one of the hub's layouts."""
    model = build("tiny", seed=seed)
    d = root / layout
    d.mkdir(parents=True)
    if layout == "sharded":
        model.save_pretrained(d, max_shard_size="50KB")
        assert (d / "model.safetensors.index.json").is_file()
    elif layout == "fp16":
        model.half().save_pretrained(d)
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
        state["vision_model.embeddings.position_ids"] = torch.arange(model.vision_model.embeddings.num_positions)[None]
        (d / "config.json").write_text(json.dumps(_legacy_config(model)))
        if layout == "bin":
            torch.save(state, d / "pytorch_model.bin")
        else:
            save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    save_tokenizer(d, context_length=77)  # the hub's files say 77 whatever the model
    _hub_preprocessor(d, model.config.vision_config.image_size)
    return d


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {layout: make_hub_dir(root, layout) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hub_layout_loads_with_transformers_embeddings(hub_dirs, layout, capsys):
    d = hub_dirs[layout]
    assert main(["info", str(d)]) == 0
    assert "CLIPModel" in capsys.readouterr().out
    ours = load(d)
    theirs = CLIPModel.from_pretrained(d, dtype=torch.float32).eval()
    assert next(ours.parameters()).dtype == torch.float32
    pixels, _ = fake_batch(3)
    ids = tokenize(["a red square", "two blue circles left of a star", "x"], 16)
    with torch.no_grad():
        torch.testing.assert_close(image_features(ours, pixels), theirs.get_image_features(pixels).pooler_output,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(text_features(ours, ids), theirs.get_text_features(ids).pooler_output,
                                   rtol=0, atol=1e-5)
    if layout in ("legacy", "bin"):
        assert ours.config.text_config.eos_token_id == 2  # kept: transformers pools such configs at the argmax


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pipelines_run_on_hub_layouts(hub_dirs, layout, tmp_path):
    d = hub_dirs[layout]
    assert main(["moe", "dmu", "--base", str(d), "--out", str(tmp_path / "dmu"), "--data", "scenes",
                 "--scenes-size", "64", "--preset", "quick", "--eval-size", "quick"]) == 0
    assert (tmp_path / "dmu" / "model" / "config.json").is_file()
    assert main(["learngene", "extract", "--ancestry", str(d), "--out", str(tmp_path / "lg"), "--steps", "2",
                 "--batch-size", "8", "--data", "scenes", "--eval-scenes", "8", "--eval-fashion", "8"]) == 0


def test_pickled_code_in_a_bin_is_refused_and_never_run(hub_dirs, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text((hub_dirs["bin"] / "config.json").read_text())
    torch.save({"text_projection.weight": Evil()}, d / "pytorch_model.bin")
    capsys.readouterr()
    assert main(["info", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipforge: error: ") and "\n" not in err and str(d) in err
    assert not marker.exists()


def test_unknown_and_wrong_shape_tensors_name_themselves(hub_dirs, tmp_path):
    from safetensors.torch import load_file

    from clipforge.errors import ClipforgeError

    state = load_file(hub_dirs["legacy"] / "model.safetensors")
    for name, edit in (("unknown", lambda s: s.update({"text_model.extra.weight": torch.zeros(2)})),
                       ("shape", lambda s: s.update({"text_projection.weight": torch.zeros(5, 5)}))):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((hub_dirs["legacy"] / "config.json").read_text())
        s = dict(state)
        edit(s)
        save_file(s, d / "model.safetensors")
        with pytest.raises(ClipforgeError, match="text_model.extra.weight" if name == "unknown" else
                           r"text_projection.weight.*\(5, 5\).*\(32, 32\)"):
            load(d)


def test_legacy_eos_masks_count_only_caption_tokens():
    """With `eos_token_id: 2` (the hub's legacy configs) the caption ends at the argmax id, not at id 2."""
    ids = tokenize(["a red square", "two big blue circles"], 12)
    # hand count: bos + words + eos
    lengths = [1 + 3 + 1, 1 + 4 + 1]
    assert caption_end(ids, 2).tolist() == [n - 1 for n in lengths]
    assert caption_mask(ids, 2).sum(dim=1).tolist() == lengths
    assert caption_mask(ids, 49407).sum(dim=1).tolist() == lengths
    # a row without the configured eos counts every position (nothing to end it)
    assert caption_mask(torch.ones(1, 5, dtype=torch.long), 49407).sum().item() == 5


def test_legacy_eos_balance_loss_and_routing_statistics(hub_dirs):
    from clipforge.data.scenes import ScenesDataset
    from clipforge.moe.balance import switch_balance_loss, text_token_mask
    from clipforge.moe.pack import upcycle
    from clipforge.moe.routing import routing_stats

    base = load(hub_dirs["legacy"])
    moe = upcycle(base, num_experts=2, top_k=1)
    assert moe.config.text_config.eos_token_id == 2
    data = ScenesDataset(size=6, seed=0)
    stats = routing_stats(moe, data, batch_size=3)
    captions = [data[i].captions[0] for i in range(6)]
    ids = tokenize(captions, 16)
    hand = int(sum(min(len(ids[i][ids[i] != 0]), 16) for i in range(6)))  # bos..eos, no padding
    assert stats["text"]["tokens"] == hand
    # the balance loss sees the same mask: padded positions carry no weight
    with torch.no_grad():
        out = moe.get_text_features(input_ids=ids, output_router_logits=True)
    mask = text_token_mask(ids, 2)
    assert int(mask.sum()) == hand
    real = switch_balance_loss([x.reshape(6, 16, -1)[mask] for x in out.router_logits])
    assert torch.allclose(switch_balance_loss(out.router_logits, mask), real)


@pytest.mark.parametrize("kind", ["vision", "text", "moe"])
def test_towers_and_moe_in_hub_layouts(kind, tmp_path):
    """Vision-only as `.bin` with stored position ids, text-only sharded, a CLIP-MoE in fp16 and sharded."""
    from transformers import AutoModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from clipforge.models.io import save as cf_save
    from clipforge.moe.pack import upcycle

    d = tmp_path / kind
    if kind == "vision":
        model = build("tiny", seed=1, kind="vision")
        d.mkdir()
        model.config.save_pretrained(d)
        state = dict(model.state_dict())
        state["vision_model.embeddings.position_ids"] = torch.arange(model.vision_model.embeddings.num_positions)[None]
        torch.save(state, d / "pytorch_model.bin")
        theirs = CLIPVisionModelWithProjection.from_pretrained(d).eval()
    elif kind == "text":
        model = build("tiny", seed=2, kind="text")
        model.save_pretrained(d, max_shard_size="40KB")
        assert (d / "model.safetensors.index.json").is_file()
        theirs = CLIPTextModelWithProjection.from_pretrained(d).eval()
    else:
        model = upcycle(build("tiny", seed=3), num_experts=2, top_k=1).half()
        cf_save(model, d)
        theirs = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    ours = load(d)
    assert type(ours) is type(theirs) and next(ours.parameters()).dtype == torch.float32
    pixels, ids = fake_batch(2)
    with torch.no_grad():
        if kind != "text":
            torch.testing.assert_close(image_features(ours, pixels), image_features(theirs, pixels), rtol=0, atol=1e-5)
        if kind != "vision":
            torch.testing.assert_close(text_features(ours, ids), text_features(theirs, ids), rtol=0, atol=1e-5)
