"""Save and load clipforge models in Hugging Face layout.

A model directory holds `config.json` + `model.safetensors` (what `transformers` reads), the
tokenizer files and `preprocessor_config.json` (so the pipeline travels with the weights),
`clipforge.json` (provenance: where the weights came from, metrics when known) and a model card
`README.md`. A dense model saved here loads with plain `transformers.CLIPModel.from_pretrained(dir)`.

Directories are written to a temporary sibling and renamed into place, so an interrupted save never
leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..errors import ClipforgeError, first_line
from ..files import atomic_dir, portable, read_json_object
from ..markdown import table
from .registry import MODEL_CLASSES

WEIGHTS = "model.safetensors"
PROVENANCE = "clipforge.json"
MODEL_SUBDIR = "model"  # a run directory's finished model (see `clipforge.train.runs`)

def save(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write `model` to `out_dir` (HF layout + tokenizer + preprocessing + provenance + model card)."""
    from .preprocess import save_preprocessor_config
    from .tokenizer import TOKENIZER_ATTR, save_tokenizer

    out_dir = Path(out_dir)
    prov = dict(provenance or {})
    _base_model(prov)
    prov = portable(prov)  # written for others: no machine's absolute paths
    prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    prov.setdefault("clipforge_version", _version())
    if metrics is not None:
        prov["metrics"] = metrics
    with atomic_dir(out_dir) as tmp, _quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        if getattr(model.config, "model_type", None) == "clipforge_clip_moe":
            from .clip_moe.remote import (
                ship_code,  # loads without clipforge: trust_remote_code=True
            )

            ship_code(tmp)
        if hasattr(model, "text_model"):
            save_tokenizer(tmp, context_length=_text_config(model.config).max_position_embeddings,
                           processor=hasattr(model, "vision_model"), tokenizer=getattr(model, TOKENIZER_ATTR, None))
        if hasattr(model, "vision_model"):
            save_preprocessor_config(model.config, tmp, processor=hasattr(model, "text_model"))
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(model, prov))
    return out_dir


class _quiet_transformers:
    """Silence transformers' progress bars and load reports: a save or load is quick, the bars clutter
    logs, and clipforge turns whatever a load report would say into its own one-line error."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        self._level = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)
        if self._was:
            hf_logging.enable_progress_bar()
        return False


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("clipforge")
    except Exception:  # pragma: no cover - running from a source tree
        return "unknown"


def read_provenance(model_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(model_dir) / PROVENANCE
    return json.loads(p.read_text()) if p.exists() else {}


# The weight files transformers reads, in the order it prefers them.
WEIGHT_FILES = (WEIGHTS, "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# `model_type` → class, for configs that do not name their architecture (some hub directories).
_BY_MODEL_TYPE = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModelWithProjection",
                  "clip_text_model": "CLIPTextModelWithProjection", "clipforge_clip_moe": "CLIPMoEModel"}
# Hub directories name the towers without projection; clipforge's towers always carry theirs.
_TOWER_ALIASES = {"CLIPVisionModel": "CLIPVisionModelWithProjection", "CLIPTextModel": "CLIPTextModelWithProjection"}


def model_class(arch: str | None) -> type[PreTrainedModel] | None:
    """The class clipforge rebuilds for an `architectures[0]` name (None if it is not a CLIP it knows)."""
    arch = _TOWER_ALIASES.get(arch, arch)
    dense = {cls.__name__: cls for cls in MODEL_CLASSES.values()}
    if arch in dense:
        return dense[arch]
    if arch == "CLIPMoEModel":
        from .clip_moe.modeling_clip_moe import CLIPMoEModel  # imported only when a CLIP-MoE is met

        return CLIPMoEModel
    return None


def resolve_model_dir(path: str | os.PathLike, strict: bool = True) -> Path:
    """A model directory, or a run directory holding `model/` (what `clipforge train`, `ancestry` and
    `moe dmu` write), as the model directory itself. Neither: an error (`strict`) or `path` unchanged."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / MODEL_SUBDIR / "config.json").is_file():
        return path / MODEL_SUBDIR
    if strict:
        raise ClipforgeError(f"{path}: not a model directory (no config.json in it or in {path / MODEL_SUBDIR})")
    return path


def _load_config(model_dir: Path):
    cfg_path = model_dir / "config.json"
    if not model_dir.exists():
        raise ClipforgeError(f"{model_dir}: no such model directory")
    if not cfg_path.is_file():
        raise ClipforgeError(f"{cfg_path}: missing config.json (not a clipforge / Hugging Face model directory)")
    raw = read_json_object(cfg_path, "a config")
    arch = (raw.get("architectures") or [None])[0] or _BY_MODEL_TYPE.get(raw.get("model_type"))
    cls = model_class(arch)
    if cls is None:
        known = ", ".join(sorted(set(_BY_MODEL_TYPE.values()) | set(_TOWER_ALIASES)))
        raise ClipforgeError(f"{cfg_path}: architecture {arch!r} is not one clipforge loads (known: {known})")
    try:
        # The class's own config type, so legacy fields (`text_config_dict`, ...) are read as transformers does.
        config = cls.config_class.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises many types for a malformed config
        raise ClipforgeError(f"{cfg_path}: cannot be read as a model config ({first_line(e)})") from None
    return cls, config


def own_memory(model: nn.Module) -> None:
    """Copy every parameter and buffer of `model` into memory of its own, allocated as a freshly built
    model's is (PyTorch's allocator: 64-byte aligned), in place (tied weights stay tied).

    transformers leaves loaded weights as views into the memory-mapped safetensors file, at the file's
    byte offsets (not 64-byte aligned), and some CPU kernels round differently at another alignment: a
    matrix-vector product (an MoE expert that got exactly one token, a last batch of one, in fp32) differs
    in the last bits. So a model loaded from disk trained to other bits than the same model built in
    memory, and DMU interrupted after packing did not resume bit-exact. With its own memory, a loaded
    model computes exactly as the in-memory one.
    """
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.data = t.data.clone(memory_format=torch.contiguous_format)



def load(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = torch.float32) -> PreTrainedModel:
    """Rebuild a saved model from its directory alone (config next to weights), in eval mode.

    `model_dir` may also be a run directory holding `model/` (see `resolve_model_dir`).

    Reads what transformers reads, through transformers' own loader: `model.safetensors`, sharded
    safetensors with `model.safetensors.index.json`, or `pytorch_model.bin` (unpickled with
    `weights_only=True`, so a file holding code is refused), legacy config fields, the hub's stored
    `position_ids` buffers. Weights come in as `dtype` (float32 unless None: the checkpoint's own).
    Errors name the culprit: a missing `config.json`, a missing or unreadable weights file, tensors
    whose names or shapes disagree with the config, or a tensor holding NaN or inf (refused at load,
    not discovered as a NaN loss later).
    """
    model_dir = resolve_model_dir(model_dir, strict=False)  # `_load_config` names what is missing
    cls, config = _load_config(model_dir)
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise ClipforgeError(f"{model_dir}: missing weights file (one of {', '.join(WEIGHT_FILES)})")
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(model_dir, config=config, local_files_only=True, dtype=dtype,
                                              weights_only=True, ignore_mismatched_sizes=True,
                                              output_loading_info=True)
    except Exception as e:  # unreadable file, bad shard index, pickled code, ...
        raise ClipforgeError(f"{model_dir}: cannot read the weights ({first_line(e)})") from None
    own_memory(model)
    problems = []
    order = {k: i for i, k in enumerate(model.state_dict())}  # report in the model's own order
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: order.get(m[0], len(order)))
    if mismatched:  # (name, checkpoint shape, model shape)
        key, got, want = mismatched[0][:3]
        problems.append(f"tensor {key!r} has shape {tuple(got)} but config.json implies {tuple(want)}")
    if info.get("missing_keys"):
        problems.append(f"missing {sorted(info['missing_keys'], key=lambda k: order.get(k, len(order)))[:3]}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {sorted(info['unexpected_keys'])[:3]}")
    if info.get("error_msgs"):
        problems.append(first_line(RuntimeError(info["error_msgs"][0])))
    if problems:
        raise ClipforgeError(f"{model_dir}: weights do not match config.json: {'; '.join(problems)}")
    bad = nonfinite_tensor(model.state_dict().items())
    if bad is not None:
        raise ClipforgeError(f"{_weights_file(model_dir, bad)}: tensor {bad!r} holds NaN or inf values; "
                             "the model is refused (train it again from a finite checkpoint)")
    _adopt_processing(model, model_dir)
    return model.to(device).eval()


def nonfinite_tensor(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None: one cheap pass, no copies kept."""
    for name, t in named:
        if (t.is_floating_point() or t.is_complex()) and not t.is_meta and not bool(torch.isfinite(t).all()):
            return name
    return None


def _weights_file(model_dir: Path, key: str) -> Path:
    """The weights file holding tensor `key`: the shard a sharded index names, else the single file."""
    for name in WEIGHT_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shard = json.loads(path.read_text()).get("weight_map", {}).get(key)
            except (ValueError, AttributeError):  # the loader read it already; be lenient in an error path
                shard = None
            return model_dir / shard if isinstance(shard, str) else path
        return path
    return model_dir


def _adopt_processing(model: PreTrainedModel, model_dir: Path) -> None:
    """The directory's own preprocessing and tokenizer become the model's (they travel with it)."""
    from .preprocess import read_preprocessor_config
    from .tokenizer import TOKENIZER_ATTR, load_tokenizer

    if hasattr(model, "vision_model"):
        read_preprocessor_config(model.config, model_dir)
    if hasattr(model, "text_model"):
        tok = load_tokenizer(model_dir)
        if tok is not None:
            setattr(model, TOKENIZER_ATTR, tok)


def _materialize_buffers(model: torch.nn.Module) -> None:
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "position_ids":
                    module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                else:  # pragma: no cover - no other meta buffer exists in CLIP
                    raise RuntimeError(f"cannot materialise buffer {name} of {type(module).__name__}")


def model_card(model: PreTrainedModel, provenance: dict[str, Any]) -> str:
    """A Hugging Face style model card: architecture, parameter counts, origin, metrics."""
    from .params import count_params

    cfg = model.config
    counts = count_params(model)
    lines = [*_front_matter(model, provenance), "",
             f"# {provenance.get('name', type(model).__name__)}", "",
             f"A `{type(model).__name__}` written by clipforge. Load it with plain transformers:", "",
             *_load_snippet(model), "", "## Architecture", ""]
    lines += table(["tower", "layers", "width", "heads", "MLP", "act", "input"], [
        [tower, sub.num_hidden_layers, sub.hidden_size, sub.num_attention_heads, sub.intermediate_size,
         sub.hidden_act, f"{sub.image_size}px, patch {sub.patch_size}, {sub.num_channels} ch" if tower == "vision"
         else f"{sub.max_position_embeddings} tokens"] for tower, sub in _towers(cfg)])
    lines += ["", f"Projection dim: {getattr(cfg, 'projection_dim', '?')}.", "", "## Parameters", ""]
    lines += table(["part", "parameters"], [[k, f"{v:,}"] for k, v in counts.items() if v])
    if getattr(cfg, "model_type", None) == "clipforge_clip_moe":
        from .clip_moe.card import card_section

        lines += ["", card_section(model)]
    lines += ["", "## Where the weights came from", ""]
    src = provenance.get("source", "unknown")
    lines.append(f"- source: {src}")
    for k, v in provenance.items():
        if k not in ("source", "metrics", "name"):
            lines.append(f"- {k}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")
    metrics = provenance.get("metrics")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += table(["metric", "value"], [[k, f"{v:.4f}" if isinstance(v, float) else v]
                                             for k, v in _flatten(metrics).items()])
    else:
        lines.append("Not measured yet.")
    return "\n".join(lines) + "\n"


# What the hub's task filter calls each kind of model.
PIPELINE_TAGS = {"CLIPModel": "zero-shot-image-classification", "CLIPMoEModel": "zero-shot-image-classification",
                 "CLIPVisionModelWithProjection": "image-feature-extraction",
                 "CLIPTextModelWithProjection": "feature-extraction"}
# Provenance keys that name the model this one was made from, in the order they are looked for.
_BASE_KEYS = ("base_model", "base", "ancestry", "model", "learngene")


def _base_model(prov: dict[str, Any]) -> None:
    """Set `base_model` (the model this one was made from) and, when that directory's card names one, its
    `license`, from the provenance keys writers use for it."""
    base = next((prov[k] for k in _BASE_KEYS if isinstance(prov.get(k), (str, os.PathLike))), None)
    if base is None:
        return
    prov.setdefault("base_model", str(base))
    card = Path(base) / "README.md"
    if "license" not in prov and card.is_file():
        match = re.search(r"(?m)^license:\s*(\S+)\s*$", card.read_text(errors="replace").split("\n---", 1)[0])
        if match:
            prov["license"] = match.group(1)


def _front_matter(model: PreTrainedModel, prov: dict[str, Any]) -> list[str]:
    """The card's YAML header: library, tags, pipeline tag, base model, license and datasets when known."""
    lines = ["---", "library_name: transformers", "tags: [clip, clipforge]",
             f"pipeline_tag: {PIPELINE_TAGS.get(type(model).__name__, 'feature-extraction')}"]
    if prov.get("base_model"):
        lines.append(f"base_model: {json.dumps(str(prov['base_model']))}")
    if prov.get("license"):
        lines.append(f"license: {prov['license']}")
    data = prov.get("data")
    names = [data] if isinstance(data, str) else [d for d in data if isinstance(d, str)] if isinstance(data, list) \
        else []
    if names:
        lines.append("datasets: [" + ", ".join(json.dumps(Path(n).name or n) for n in names) + "]")
    return lines + ["---"]


def _load_snippet(model: PreTrainedModel) -> list[str]:
    """How to load this directory with plain transformers: the class that keeps the projection."""
    name = type(model).__name__
    if getattr(model.config, "model_type", None) == "clipforge_clip_moe":
        return ["```python", "from transformers import AutoModel, AutoProcessor",
                "# the modelling code ships in this directory; clipforge need not be installed",
                "model = AutoModel.from_pretrained(\"<this directory>\", trust_remote_code=True)",
                "processor = AutoProcessor.from_pretrained(\"<this directory>\", trust_remote_code=True)", "```"]
    extra = {"CLIPModel": ["processor = AutoProcessor.from_pretrained(\"<this directory>\")"],
             "CLIPVisionModelWithProjection": ["processor = AutoImageProcessor.from_pretrained(\"<this directory>\")"],
             "CLIPTextModelWithProjection": ["tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")"]}
    helper = {"CLIPModel": "AutoProcessor", "CLIPVisionModelWithProjection": "AutoImageProcessor",
              "CLIPTextModelWithProjection": "AutoTokenizer"}.get(name)
    lines = ["```python", f"from transformers import {name}" + (f", {helper}" if helper else ""),
             f"model = {name}.from_pretrained(\"<this directory>\")", *extra.get(name, [])]
    if name != "CLIPModel":
        lines.insert(2, "# not AutoModel: it would build the tower without its projection")
    return lines + ["```"]


def _text_config(cfg):
    return getattr(cfg, "text_config", None) or cfg


def _towers(cfg):
    if hasattr(cfg, "vision_config") and hasattr(cfg, "text_config"):
        return [("vision", cfg.vision_config), ("text", cfg.text_config)]
    return [("vision" if hasattr(cfg, "patch_size") else "text", cfg)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
