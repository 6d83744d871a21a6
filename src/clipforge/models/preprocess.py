"""CLIP image preprocessing with PIL and numpy only (no torchvision).

The pipeline is OpenAI CLIP's: convert to RGB (or L for a 1-channel model), resize the shorter
side to `image_size` with bicubic filtering, centre-crop a square, scale to [0, 1] and normalise
per channel. Sizes and crop offsets follow torchvision's rounding, so a PIL image gives the same
pixels here as in open_clip. `save_preprocessor_config` writes the same recipe for Hugging Face's
`CLIPImageProcessor`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ClipforgeError
from .registry import CLIP_MEAN, CLIP_STD

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# ITU-R 601 luma weights, the ones PIL uses for RGB -> L; they fold RGB statistics into one channel.
LUMA = (0.299, 0.587, 0.114)
_HIGH_DEPTH_MODES = ("I", "F")
# Vision-config field for a resize larger than the crop (absent: resize straight to the crop).
RESIZE_FIELD = "image_resize_size"


def _stats(values: float | Sequence[float], num_channels: int, what: str) -> tuple[float, ...]:
    """Per-channel mean or std, one value per channel (a 3-value RGB statistic folds into grey)."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, num_channels)
    if arr.size == 3 and num_channels == 1:
        arr = np.asarray([float(np.dot(arr, LUMA))])
    if arr.size != num_channels:
        raise ClipforgeError(f"image {what} has {arr.size} values but the model takes {num_channels} channels")
    if what == "std" and np.any(arr <= 0):
        raise ClipforgeError(f"image std must be positive, got {arr.tolist()}")
    return tuple(float(v) for v in arr)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit integer and float images to 8 bits (PIL would clip them at 255)."""
    if not image.mode.startswith(_HIGH_DEPTH_MODES):
        return image
    arr = np.asarray(image, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if image.mode.startswith("I;16") or peak > 255:
        arr = arr / 257.0  # 16-bit range onto 8-bit
    elif image.mode == "F" and peak <= 1.0:
        arr = arr * 255.0  # a float image in [0, 1]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


class ImageTransform:
    """PIL image -> normalised float tensor [C, image_size, image_size]."""

    def __init__(self, image_size: int, mean: float | Sequence[float] = CLIP_MEAN,
                 std: float | Sequence[float] = CLIP_STD, num_channels: int = 3,
                 resize_size: int | None = None) -> None:
        if num_channels not in (1, 3):
            raise ClipforgeError(f"num_channels must be 1 or 3, got {num_channels}")
        if int(image_size) < 1:
            raise ClipforgeError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        # The shorter side before the centre crop (CLIPs resize straight to the crop: the default).
        self.resize_size = int(resize_size) if resize_size else self.image_size
        if self.resize_size < self.image_size:
            raise ClipforgeError(f"resize size {self.resize_size} is smaller than the crop {self.image_size}")
        self.num_channels = num_channels
        self.mean = _stats(mean, num_channels, "mean")
        self.std = _stats(std, num_channels, "std")
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(num_channels, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(num_channels, 1, 1)

    def __repr__(self) -> str:
        resize = f", resize_size={self.resize_size}" if self.resize_size != self.image_size else ""
        return (f"ImageTransform(image_size={self.image_size}, mean={list(self.mean)}, "
                f"std={list(self.std)}, num_channels={self.num_channels}{resize})")

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Converted, resized and centre-cropped PIL image (before scaling and normalising)."""
        if not isinstance(image, Image.Image):
            raise ClipforgeError(f"expected a PIL image, got {type(image).__name__}")
        image = _to_8bit(image).convert("L" if self.num_channels == 1 else "RGB")
        size, (w, h) = self.resize_size, image.size
        if w < 1 or h < 1:
            raise ClipforgeError(f"image has no pixels ({w}x{h})")
        # Shorter side to `size`, longer side truncated, as torchvision's Resize(int) does.
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        # torchvision's CenterCrop offsets: round-half-even of the surplus / 2.
        crop = self.image_size
        left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
        return image.crop((left, top, left + crop, top + crop))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(self.resize_and_crop(image), dtype=np.float32) / np.float32(255.0)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray((arr - self._mean) / self._std))


def _vision_config(config: Any) -> Any:
    """The vision config inside a CLIPConfig, a tower's config, or a model (via `.config`)."""
    if not hasattr(config, "to_dict") and hasattr(config, "config"):
        config = config.config  # a model was passed
    config = getattr(config, "vision_config", config)
    if getattr(config, "image_size", None) is None:
        raise ClipforgeError(f"{type(config).__name__} has no vision settings (image_size); "
                             "pass a CLIP or vision config")
    return config


def _settings(config: Any) -> tuple[int, list[float], list[float], int, int | None]:
    vc = _vision_config(config)
    mean = getattr(vc, "image_mean", None) or CLIP_MEAN
    std = getattr(vc, "image_std", None) or CLIP_STD
    return (int(vc.image_size), list(mean), list(std), int(getattr(vc, "num_channels", 3) or 3),
            getattr(vc, RESIZE_FIELD, None))


def transform_for(config: Any) -> ImageTransform:
    """The `ImageTransform` of a CLIPConfig, CLIPVisionConfig or model (CLIP mean/std when unset)."""
    size, mean, std, channels, resize = _settings(config)
    return ImageTransform(size, mean, std, channels, resize)


def read_preprocessor_config(config: Any, model_dir: str | Path) -> None:
    """Adopt a directory's `preprocessor_config.json` as the model's preprocessing (recorded in its config).

    A hub directory brings its own normalisation and resize; clipforge records them in the vision
    config (`image_mean`, `image_std`, `image_resize_size`), so `transform_for` and every later save use
    them. The crop must be the model's input size: anything else is the wrong processor for these weights.
    """
    path = Path(model_dir) / PREPROCESSOR_CONFIG
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{path}: not valid JSON ({e})") from None
    vc = _vision_config(config)

    def edge(value: Any, key: str) -> int | None:
        if isinstance(value, dict):
            value = value.get(key, value.get("height"))
        return int(value) if isinstance(value, (int, float)) else None

    crop = edge(data.get("crop_size"), "height") if data.get("do_center_crop", True) else None
    if crop is not None and crop != int(vc.image_size):
        raise ClipforgeError(f"{path}: crop_size {crop} differs from the model's image_size {vc.image_size}")
    for key in ("image_mean", "image_std"):
        if data.get(key) is not None:
            values = _stats(data[key], int(getattr(vc, "num_channels", 3) or 3), key.split("_")[1])
            setattr(vc, key, list(values))
    resize = edge(data.get("size"), "shortest_edge")
    if resize is not None and resize != int(vc.image_size):
        setattr(vc, RESIZE_FIELD, resize)
    _stats(getattr(vc, "image_std", None) or CLIP_STD, int(getattr(vc, "num_channels", 3) or 3), "std")


def save_preprocessor_config(config: Any, out_dir: str | Path, *, processor: bool = False) -> Path:
    """Write `preprocessor_config.json` (Hugging Face `CLIPImageProcessor` format) into `out_dir`.

    `processor=True` (a full CLIP) also names `CLIPProcessor`, so `AutoProcessor` builds one.
    """
    transform = transform_for(config)
    size = transform.image_size
    data = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        # A 1-channel model must not have its grey images turned into RGB by the HF processor.
        "do_convert_rgb": transform.num_channels == 3,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(transform.mean),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(transform.std),
        "resample": int(Image.Resampling.BICUBIC),
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": transform.resize_size},
    }
    if processor:
        data["processor_class"] = "CLIPProcessor"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREPROCESSOR_CONFIG
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def to_pixel_values(images: Sequence[Image.Image], transform: ImageTransform) -> torch.Tensor:
    """A batch [B, C, H, W] of transformed images."""
    if len(images) == 0:
        return torch.zeros(0, transform.num_channels, transform.image_size, transform.image_size)
    return torch.stack([transform(im) for im in images])
