"""Qualitative retrieval examples: for a few images, the captions each model ranks highest.

`retrieval_examples` returns JSON-ready data (each image carried as a small base64 PNG, so the
result alone is enough to plot); `plot_retrieval_examples` draws it as a grid, one row per image.
"""

from __future__ import annotations

import base64
import io
import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from ..data.base import as_image  # noqa: E402
from ..errors import ClipforgeError  # noqa: E402
from ..eval.embed import embed_images, embed_texts  # noqa: E402
from .plots import _save  # noqa: E402

# Keys of an image entry that are not model names.
RESERVED_KEYS = ("index", "caption", "image_png")
_GREEN, _RED = "#1a7f37", "#cf222e"


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def retrieval_examples(models: dict[str, nn.Module], dataset: Any, n_images: int = 6, top: int = 3,
                       seed: int = 0, batch_size: int = 256, device: str | torch.device | None = None,
                       include_images: bool = True) -> dict[str, Any]:
    """Top-`top` caption retrievals per model for `n_images` seeded picks from `dataset`.

    The caption pool is the first caption of every sample (duplicates merged, so the top list shows
    distinct captions); a retrieved caption is `correct` when it equals the image's own caption.
    Returns {"models": [...], "n_captions": int, "images": [{"index", "caption", "image_png"?,
    <model name>: [{"caption", "score", "correct"}, ...]}, ...]}.
    """
    if not models:
        raise ClipforgeError("retrieval_examples needs at least one model")
    clash = [m for m in models if m in RESERVED_KEYS]
    if clash:
        raise ClipforgeError(f"model name {clash[0]!r} is reserved in retrieval examples; rename it")
    n = len(dataset)
    if n == 0 or n_images < 1 or top < 1:
        raise ClipforgeError(f"retrieval_examples needs a non-empty dataset, n_images >= 1 and top >= 1 "
                             f"(got {n} items, {n_images}, {top})")
    # One pass over the dataset: procedural datasets render on every access.
    items = [dataset[i] for i in range(n)]
    own = [(getattr(it, "captions", None) or [""])[0] for it in items]
    if not any(own):
        raise ClipforgeError("retrieval_examples: the dataset's items have no captions")
    pool = list(dict.fromkeys(own))
    picks = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=min(n_images, n), replace=False))
    images = [as_image(items[i]) for i in picks]

    entries: list[dict[str, Any]] = [{"index": i, "caption": own[i]} for i in picks]
    if include_images:
        for e, im in zip(entries, images):
            e["image_png"] = _png_b64(im)
    k = min(top, len(pool))
    for name, model in models.items():
        img = embed_images(model, images, batch_size=batch_size, device=device)
        txt = embed_texts(model, pool, device=device)
        # Both are L2-normalised, so the dot product is the cosine similarity.
        scores, idx = (img @ txt.T).topk(k, dim=1)
        for e, s_row, i_row in zip(entries, scores.tolist(), idx.tolist()):
            e[name] = [{"caption": pool[j], "score": round(float(s), 4), "correct": pool[j] == e["caption"]}
                       for s, j in zip(s_row, i_row)]
    return {"models": list(models), "n_captions": len(pool), "images": entries}


def _entry_image(entry: dict[str, Any], dataset: Any | None) -> Image.Image:
    if "image_png" in entry:
        return Image.open(io.BytesIO(base64.b64decode(entry["image_png"]))).convert("RGB")
    if dataset is None:
        raise ClipforgeError("retrieval examples carry no images (include_images=False); pass the dataset")
    return as_image(dataset[entry["index"]]).convert("RGB")


def _short_label(caption: str, width: int = 32, lines: int = 4) -> str:
    """The caption under an image, at most `lines` lines (cut with "…"): a longer one ran into the next row."""
    wrapped = textwrap.wrap(caption, width)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return "\n".join(wrapped)


def plot_retrieval_examples(examples: dict[str, Any], path: str | os.PathLike, dataset: Any | None = None,
                            wrap: int = 62) -> Path:
    """A grid: per row an image (upscaled, nearest) and, per model, its top captions (green = own).

    Images come from the examples' `image_png` (or from `dataset` when they were left out).
    """
    entries = examples.get("images") or []
    if not entries:
        raise ClipforgeError("no retrieval examples to plot")
    names = examples.get("models") or [k for k in entries[0] if k not in RESERVED_KEYS]
    font = 8
    fig, axes = plt.subplots(len(entries), 1 + len(names), squeeze=False,
                             figsize=(2.2 + 4.6 * len(names), 2.5 * len(entries)),
                             gridspec_kw={"width_ratios": [1] + [2.4] * len(names)})
    for r, entry in enumerate(entries):
        im = _entry_image(entry, dataset)
        scale = max(1, 160 // max(im.size))  # small scenes (40 px) become crisp blocks, not blur
        ax = axes[r][0]
        ax.imshow(im.resize((im.width * scale, im.height * scale), Image.NEAREST), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{entry['index']}", fontsize=font)
        ax.set_xlabel(_short_label(entry["caption"]), fontsize=font - 1)
        for c, name in enumerate(names, start=1):
            ax = axes[r][c]
            ax.axis("off")
            prev = ax.text(0, 1, name if r == 0 else "", fontsize=font + 2, fontweight="bold", va="top",
                           transform=ax.transAxes)
            for rank, hit in enumerate(entry.get(name, []), start=1):
                text = textwrap.fill(f"{rank}. ({hit['score']:.2f}) {hit['caption']}", wrap, subsequent_indent="    ")
                # Each hit hangs below the previous text's box, so wrapped lines never overlap.
                prev = ax.annotate(text, xy=(0, 0), xycoords=prev, xytext=(0, -5), textcoords="offset points",
                                   va="top", fontsize=font, color=_GREEN if hit["correct"] else _RED,
                                   fontweight="bold" if hit["correct"] else "normal")
    fig.tight_layout()
    return _save(fig, path)
