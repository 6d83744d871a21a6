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
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, PreTrainedModel

from ..errors import ClipforgeError
from .registry import MODEL_CLASSES

WEIGHTS = "model.safetensors"
PROVENANCE = "clipforge.json"

# `architectures[0]` in config.json → class. Other model families (the CLIP-MoE) register here on import.
ARCHITECTURES: dict[str, type[PreTrainedModel]] = {cls.__name__: cls for cls in MODEL_CLASSES.values()}
# Optional extra writers for a model family (e.g. the model card section of a CLIP-MoE).
CARD_SECTIONS: list[Callable[[PreTrainedModel], str]] = []


def register_architecture(cls: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """Let `load()` rebuild models of class `cls` from their `config.json`."""
    ARCHITECTURES[cls.__name__] = cls
    return cls


def atomic_dir(out_dir: Path):
    """Context: yields a temp dir beside `out_dir`; on success it replaces `out_dir` in one rename."""

    class _Ctx:
        def __enter__(self):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            old = None
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
                os.replace(out_dir, old)
            os.replace(self.tmp, out_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return False

    return _Ctx()


def save(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write `model` to `out_dir` (HF layout + tokenizer + preprocessing + provenance + model card)."""
    from .preprocess import save_preprocessor_config
    from .tokenizer import save_tokenizer

    out_dir = Path(out_dir)
    prov = dict(provenance or {})
    prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    prov.setdefault("clipforge_version", _version())
    if metrics is not None:
        prov["metrics"] = metrics
    with atomic_dir(out_dir) as tmp, _quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        if hasattr(model, "text_model"):
            save_tokenizer(tmp)
        if hasattr(model, "vision_model"):
            save_preprocessor_config(model.config, tmp)
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(model, prov))
    return out_dir


class _quiet_transformers:
    """Silence transformers' per-save progress bars: a save is instant and the bars clutter logs."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

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


def update_provenance(model_dir: str | os.PathLike, **fields: Any) -> None:
    """Merge `fields` into a saved model's `clipforge.json` (atomically) and refresh its card."""
    model_dir = Path(model_dir)
    prov = read_provenance(model_dir)
    prov.update(fields)
    tmp = model_dir / f".{PROVENANCE}.tmp"
    tmp.write_text(json.dumps(prov, indent=2, default=str) + "\n")
    os.replace(tmp, model_dir / PROVENANCE)


def _load_config(model_dir: Path):
    cfg_path = model_dir / "config.json"
    if not model_dir.exists():
        raise ClipforgeError(f"{model_dir}: no such model directory")
    if not cfg_path.is_file():
        raise ClipforgeError(f"{cfg_path}: missing config.json (not a clipforge / Hugging Face model directory)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ClipforgeError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    arch = (raw.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        # The CLIP-MoE registers itself on import; io stays free of it until a model needs it.
        import clipforge.moe.model  # noqa: F401
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ClipforgeError(f"{cfg_path}: architecture {arch!r} is not one clipforge loads (known: {known}; "
                             "a CLIP-MoE needs `import clipforge` first)")
    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises many types for a malformed config
        raise ClipforgeError(f"{cfg_path}: cannot be read as a model config ({str(e).splitlines()[0]})") from None
    return ARCHITECTURES[arch], config


def load(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Rebuild a saved model from its directory alone (config next to weights), in eval mode.

    Errors name the culprit: a missing `config.json`, a missing or corrupt weights file, or weights
    whose names or shapes disagree with the config.
    """
    model_dir = Path(model_dir)
    cls, config = _load_config(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ClipforgeError(f"{weights}: missing weights file")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ClipforgeError(f"{weights}: cannot read safetensors ({str(e).splitlines()[0]})") from None
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + (" " if missing and unexpected else "") + (
            f"unexpected {unexpected[:3]}" if unexpected else "")
        raise ClipforgeError(f"{weights}: weights do not match {model_dir / 'config.json'}: {what}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ClipforgeError(
                f"{weights}: tensor {k!r} has shape {tuple(state[k].shape)} but config.json implies {tuple(v.shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (position ids) were created on the meta device: rebuild them.
    _materialize_buffers(model)
    return model.to(device).eval()


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
    from ..cost import count_params

    cfg = model.config
    counts = count_params(model)
    lines = ["---", "library_name: transformers", "tags: [clip, clipforge]", "---", "",
             f"# {provenance.get('name', type(model).__name__)}", "",
             f"A `{type(model).__name__}` written by clipforge. Load it with plain transformers:", "",
             "```python", "from transformers import AutoModel", "model = AutoModel.from_pretrained(\"<this directory>\")",
             "```", "", "## Architecture", "", "| tower | layers | width | heads | MLP | act | input |",
             "|---|---|---|---|---|---|---|"]
    for tower, sub in _towers(cfg):
        inp = (f"{sub.image_size}px, patch {sub.patch_size}, {sub.num_channels} ch" if tower == "vision"
               else f"{sub.max_position_embeddings} tokens")
        lines.append(f"| {tower} | {sub.num_hidden_layers} | {sub.hidden_size} | {sub.num_attention_heads} | "
                     f"{sub.intermediate_size} | {sub.hidden_act} | {inp} |")
    lines += ["", f"Projection dim: {getattr(cfg, 'projection_dim', '?')}.", "",
              "## Parameters", "", "| part | parameters |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in counts.items() if v]
    for section in CARD_SECTIONS:
        text = section(model)
        if text:
            lines += ["", text]
    lines += ["", "## Where the weights came from", ""]
    src = provenance.get("source", "unknown")
    lines.append(f"- source: {src}")
    for k, v in provenance.items():
        if k not in ("source", "metrics", "name"):
            lines.append(f"- {k}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")
    metrics = provenance.get("metrics")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        for k, v in _flatten(metrics).items():
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    else:
        lines.append("Not measured yet.")
    return "\n".join(lines) + "\n"


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
