"""The inputs: a CLIP written as the hub publishes openai/clip-vit-base-patch32, and image-text pairs in a CSV.

Nothing is downloaded. The model has random (seeded) weights in the registry's ViT-B/32 shape (or the quick
run's tiny CLIP whose towers differ in width and depth); the directory holds what the hub's holds:

* `config.json` in the hub's legacy layout: `CLIPConfig` with every per-tower field a transformers 4.16 config
  wrote (`text_config` / `vision_config` in full, `text_config_dict` / `vision_config_dict` null, the text
  tower's legacy `bos/eos/pad` ids 0 / 2 / 1, `transformers_version` null at the top);
* `model.safetensors` in fp32 with the stored `position_ids` buffers of both towers;
* the tokenizer (`vocab.json`, `merges.txt`, `tokenizer.json`, `tokenizer_config.json`,
  `special_tokens_map.json`) and the old-style `preprocessor_config.json` (integer sizes,
  `CLIPFeatureExtractor`).

The data is what a user brings: PNG files on disk and a `train.csv` with an `image` column (paths relative to
the CSV) and a `caption` column, here drawn from `clipforge.data.scenes`.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

from clipforge.files import write_json, write_text

HUB_NAME = "openai/clip-vit-base-patch32"

# The fields a transformers-4.16 `PretrainedConfig.to_dict()` wrote into each tower of the hub's config.json
# (their values as published); the tower's architecture fields are added per model.
_LEGACY_TOWER: dict[str, Any] = {
    "_name_or_path": "", "add_cross_attention": False, "architectures": None, "attention_dropout": 0.0,
    "bad_words_ids": None, "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None,
    "decoder_start_token_id": None, "diversity_penalty": 0.0, "do_sample": False, "dropout": 0.0,
    "early_stopping": False, "encoder_no_repeat_ngram_size": 0, "finetuning_task": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "initializer_factor": 1.0, "initializer_range": 0.02, "is_decoder": False, "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "layer_norm_eps": 1e-05, "length_penalty": 1.0, "max_length": 20,
    "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1, "num_return_sequences": 1,
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "prefix": None,
    "problem_type": None, "pruned_heads": {}, "remove_invalid_values": False, "repetition_penalty": 1.0,
    "return_dict": True, "return_dict_in_generate": False, "sep_token_id": None, "task_specific_params": None,
    "temperature": 1.0, "tie_encoder_decoder": False, "tie_word_embeddings": True, "tokenizer_class": None,
    "top_k": 50, "top_p": 1.0, "torch_dtype": None, "torchscript": False, "transformers_version": "4.16.0.dev0",
    "use_bfloat16": False,
}


def hub_config(spec: dict[str, Any]) -> dict[str, Any]:
    """config.json as the hub publishes it for the architecture `spec` (a registry-style dict)."""
    v, t = spec["vision_config"], spec["text_config"]
    arch = {"hidden_act": None, "hidden_size": None, "intermediate_size": None, "num_attention_heads": None,
            "num_hidden_layers": None}
    text = dict(copy.deepcopy(_LEGACY_TOWER), **{k: t[k] for k in arch}, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                max_position_embeddings=t["max_position_embeddings"], model_type="clip_text_model",
                projection_dim=spec["projection_dim"], vocab_size=49408)
    vision = dict(copy.deepcopy(_LEGACY_TOWER), **{k: v[k] for k in arch}, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, image_size=v["image_size"], patch_size=v["patch_size"],
                  model_type="clip_vision_model", projection_dim=spec["projection_dim"])
    return {"_name_or_path": HUB_NAME, "architectures": ["CLIPModel"], "initializer_factor": 1.0,
            "logit_scale_init_value": spec["logit_scale_init_value"], "model_type": "clip",
            "projection_dim": spec["projection_dim"], "text_config": dict(sorted(text.items())),
            "text_config_dict": None, "transformers_version": None, "vision_config": dict(sorted(vision.items())),
            "vision_config_dict": None}


def hub_preprocessor(size: int) -> dict[str, Any]:
    """The hub's old-style preprocessor_config.json (integer sizes, feature-extractor names)."""
    return {"crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": size}


def write_hub_dir(spec: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """A randomly initialised CLIP of shape `spec` written into `out` in the hub's layout; returns a summary."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTokenizerFast

    from clipforge.models.params import count_params
    from clipforge.models.registry import build
    from clipforge.models.tokenizer import save_tokenizer

    model = build(spec, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # The hub's checkpoints (written by transformers 4.16) store both towers' position_ids buffers.
    state["text_model.embeddings.position_ids"] = torch.arange(spec["text_config"]["max_position_embeddings"])[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(
        model.vision_model.embeddings.num_positions)[None]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", hub_config(spec))
    write_json(out / "preprocessor_config.json", hub_preprocessor(spec["vision_config"]["image_size"]))
    save_tokenizer(out, context_length=77)  # the hub's files say 77 whatever the model
    CLIPTokenizerFast.from_pretrained(str(out)).backend_tokenizer.save(str(out / "tokenizer.json"))
    return {"name": HUB_NAME, "seed": seed, "params": count_params(model),
            "files": sorted(p.name for p in out.iterdir())}


def write_user_data(out: Path, size: int, image_size: int, seed: int) -> dict[str, Any]:
    """`size` PNG images under `out/images/` and `out/train.csv` (image, caption) naming them; returns a summary."""
    from clipforge.data.scenes import ScenesDataset

    (out / "images").mkdir(parents=True, exist_ok=True)
    data = ScenesDataset("train", size=size, seed=seed, image_size=image_size)
    rows = []
    for i in range(size):
        sample = data[i]
        name = f"images/{i:04d}.png"
        sample.image.save(out / name)
        rows.append([name, sample.captions[0]])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    write_text(out / "train.csv", buf.getvalue())
    return {"csv": "train.csv", "pairs": size, "image_size": image_size, "scenes_seed": seed,
            "first_caption": rows[0][1]}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
