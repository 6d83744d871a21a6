"""Export a model's towers as standalone embedding functions: ONNX or `torch.export` (.pt2).

Each artefact is one tower's embedding function, the projected *unnormalised* embedding that
`clipforge.models.encode` returns:

* vision: `pixel_values` float32 [B, C, H, W] → `image_embeds` float32 [B, D]
* text: `input_ids` int64 [B, T] and `attention_mask` int64 [B, T] → `text_embeds` float32 [B, D]

The batch size B is dynamic; T is fixed at the model's text context (pad to it, as the tokenizer
saved with the model does). A CLIP-MoE is traced with its dense expert dispatch (`clip_moe.moe_layer`): the
sparse dispatch sizes its work from the routing, which no static graph can hold; the dense one gives
the same output. Every artefact is checked against the model's ordinary (sparse) forward on a fresh
batch before it is kept, and the difference is recorded in `export.json`.

Weights are exported in float32 (half-precision models are cast), on the CPU.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ClipforgeError, first_line
from .encode import has_text, has_vision, image_features, text_features

FORMATS = ("onnx", "torch-export")
TOWERS = ("vision", "text")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
MANIFEST = "export.json"
# Files of the model directory that travel with the artefacts (the pipeline around them).
PIPELINE_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                  "special_tokens_map.json", "LICENSE.tokenizer")
# An export whose outputs stray further than this from PyTorch's is broken, not rounded: refuse it.
REFUSE_ABOVE = 1e-3
ONNX_OPSET = 18


class ImageEmbedder(nn.Module):
    """pixel_values [B, C, H, W] → projected image embeddings [B, D] (not normalised).

    Holds only the vision tower and its projection, so the artefact carries no text weights; the
    computation is `get_image_features`'s (checked against it at export).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.tower, self.projection = model.vision_model, model.visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.projection(self.tower(pixel_values=pixel_values).pooler_output)


class TextEmbedder(nn.Module):
    """input_ids, attention_mask [B, T] → projected text embeddings [B, D], pooled at end-of-text."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.tower, self.projection = model.text_model, model.text_projection

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.projection(self.tower(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


def towers_of(model: nn.Module) -> list[str]:
    """The towers (with their projection) a model has, in `TOWERS` order."""
    return [t for t, has, proj in (("vision", has_vision(model), "visual_projection"),
                                   ("text", has_text(model), "text_projection")) if has and hasattr(model, proj)]


def _tower_config(model: nn.Module, tower: str) -> Any:
    cfg = model.config
    return getattr(cfg, f"{tower}_config", None) or cfg


def example_inputs(model: nn.Module, tower: str, batch: int = 2, seed: int = 0) -> dict[str, Tensor]:
    """A seeded input batch for one tower (captions of random lengths, ended and padded as CLIP's are)."""
    g = torch.Generator().manual_seed(seed)
    cfg = _tower_config(model, tower)
    if tower == "vision":
        size, channels = int(cfg.image_size), int(getattr(cfg, "num_channels", 3) or 3)
        return {"pixel_values": torch.randn(batch, channels, size, size, generator=g)}
    ctx, vocab = int(cfg.max_position_embeddings), int(cfg.vocab_size)
    eos = int(cfg.eos_token_id) if int(cfg.eos_token_id) != 2 else vocab - 1  # legacy configs pool at the argmax
    ids = torch.randint(1, max(2, min(vocab - 2, eos - 1)), (batch, ctx), generator=g)
    mask = torch.zeros(batch, ctx, dtype=torch.long)
    for i in range(batch):
        end = int(torch.randint(1, ctx, (1,), generator=g))
        ids[i, end] = eos
        ids[i, end + 1:] = 0
        mask[i, :end + 1] = 1
    return {"input_ids": ids, "attention_mask": mask}


def embedder(model: nn.Module, tower: str) -> nn.Module:
    if tower not in towers_of(model):
        raise ClipforgeError(f"--tower {tower}: {type(model).__name__} has no {tower} tower "
                             f"(it has: {', '.join(towers_of(model)) or 'none'})")
    return (ImageEmbedder if tower == "vision" else TextEmbedder)(model).eval()


@contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context: eval mode, no gradients and, for a CLIP-MoE, the dense (static-shape) expert dispatch."""
    from .clip_moe.moe_layer import dense_dispatch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), dense_dispatch(model):
            yield model
    finally:
        model.train(was_training)


def export_program(model: nn.Module, tower: str) -> torch.export.ExportedProgram:
    """`torch.export` of one tower's embedding function, with a dynamic batch dimension."""
    module = embedder(model, tower)
    inputs = example_inputs(model, tower)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = {name: {0: batch} for name in inputs}
    with export_mode(model), _quiet():
        try:
            return torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic, strict=False)
        except Exception as e:  # torch raises many types; the first line names the op
            raise ClipforgeError(f"torch.export failed on the {tower} tower of {type(model).__name__}: "
                                 f"{first_line(e)}") from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' progress prints and advisory warnings (torchvision ops absent, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def require_onnx() -> None:
    """Refuse `--format onnx` in one line when the exporter's packages are missing."""
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ClipforgeError(f"--format onnx needs the {name!r} package, which is not installed: "
                                 "pip install 'clipforge[export]'") from None


def _onnxruntime() -> Any | None:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        return None


def _write_onnx(program: torch.export.ExportedProgram, path: Path, inputs: list[str], output: str) -> None:
    with _quiet():
        try:
            torch.onnx.export(program, f=str(path), input_names=inputs, output_names=[output],
                              opset_version=ONNX_OPSET, dynamo=True, external_data=True, verbose=False)
        except Exception as e:
            raise ClipforgeError(f"ONNX export failed: {first_line(e)}") from None


def run_artefact(path: str | os.PathLike, inputs: dict[str, Tensor]) -> Tensor | None:
    """Run an exported artefact (.pt2, or .onnx through onnxruntime); None when onnxruntime is missing.

    `torch.export.load` may unpickle parts of a .pt2 (tensor subclasses): run only artefacts you trust
    (clipforge's store plain tensors as raw bytes).
    """
    path = Path(path)
    if path.suffix == ".pt2":
        program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(**inputs)
    ort = _onnxruntime()
    if ort is None:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])


def export_tower(model: nn.Module, tower: str, fmt: str, out_dir: Path) -> dict[str, Any]:
    """Write one tower's artefact into `out_dir`, check it against PyTorch; its manifest entry."""
    program = export_program(model, tower)
    inputs = list(example_inputs(model, tower))
    output = "image_embeds" if tower == "vision" else "text_embeds"
    path = out_dir / f"{tower}{SUFFIX[fmt]}"
    if fmt == "onnx":
        _write_onnx(program, path, inputs, output)
    else:
        torch.export.save(program, str(path))
    # A fresh batch of another size than the traced one: the dynamic batch dimension is exercised too.
    check = example_inputs(model, tower, batch=3, seed=1)
    with torch.no_grad():  # clipforge's own embedding path, with the ordinary (sparse) MoE dispatch
        want = (image_features(model, **check) if tower == "vision" else text_features(model, **check))
    got = run_artefact(path, check)
    entry: dict[str, Any] = {
        "file": path.name,
        "inputs": {k: {"shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).removeprefix("torch.")}
                   for k, v in check.items()},
        "output": {"name": output, "shape": ["batch", int(want.shape[-1])], "dtype": "float32", "normalized": False},
    }
    if got is None:
        entry["check"] = "not run: onnxruntime is not installed"
        return entry
    diff = (got.float() - want.float()).abs().max().item()
    if not diff <= REFUSE_ABOVE * max(1.0, want.abs().max().item()):
        raise ClipforgeError(f"the exported {tower} tower disagrees with PyTorch (max abs difference {diff:.3g}); "
                             "nothing written")
    entry["check"] = {"max_abs_diff": diff, "batch": int(want.shape[0]),
                      "runtime": "onnxruntime " + _onnxruntime().__version__ if fmt == "onnx" else "torch.export.load"}
    return entry


def _towers_arg(model: nn.Module, tower: str) -> list[str]:
    if tower == "both":
        return towers_of(model)
    if tower not in TOWERS:
        raise ClipforgeError(f"--tower must be vision, text or both, got {tower!r}")
    embedder(model, tower)  # refuses a tower the model lacks
    return [tower]


def default_out(model_dir: str | os.PathLike, fmt: str) -> Path:
    """`<model dir>-onnx` or `<model dir>-torch-export`, beside the model directory."""
    d = Path(model_dir).resolve()
    return d.with_name(f"{d.name}-{fmt}")


def export(model_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
           tower: str = "both", overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Export the towers of the model in `model_dir` as `fmt`; returns (out dir, manifest).

    `out` (default `default_out`) is made once (`clipforge.run.make_artefact`): written beside itself and
    renamed into place, never over the model, a directory of other files (unless `overwrite`) or a failed
    export's leftovers; an export already there with the same settings is kept.
    """
    from ..files import file_digest
    from ..run import check_out, make_artefact
    from .io import WEIGHTS, load

    if fmt not in FORMATS:
        raise ClipforgeError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    model_dir = Path(model_dir)
    out_dir = Path(out) if out is not None else default_out(model_dir, fmt)
    check_out(out_dir, [model_dir])
    model = load(model_dir).float()
    towers = _towers_arg(model, tower)
    is_moe = any(type(m).__name__ == "MoEFFN" for m in model.modules())
    manifest: dict[str, Any] = {
        "format": fmt, "source": str(model_dir.resolve()), "class": type(model).__name__,
        "torch": torch.__version__, "towers": {},
        "moe_dispatch": "dense (all experts, weighted by the top-k routing gates)" if is_moe else None,
    }
    if fmt == "onnx":
        manifest["opset"] = ONNX_OPSET

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        for t in towers:
            manifest["towers"][t] = export_tower(model, t, fmt, tmp)
        for name in PIPELINE_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    weights = model_dir / WEIGHTS
    settings = {"model_sha256": file_digest(weights) if weights.is_file() else str(model_dir), "format": fmt,
                "towers": towers}
    if not make_artefact(out_dir, "export", settings, write, overwrite=overwrite):
        manifest = json.loads((out_dir / MANIFEST).read_text())
    return out_dir, manifest
