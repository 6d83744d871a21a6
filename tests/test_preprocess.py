"""Image preprocessing without torchvision: shapes, normalisation, centre crop, HF config."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.errors import ClipforgeError
from clipforge.models.preprocess import ImageTransform, save_preprocessor_config, to_pixel_values, transform_for
from clipforge.models.registry import CLIP_MEAN, CLIP_STD, build, make_config, tower_config

RNG = np.random.default_rng(0)


def _noise(w, h, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("image", [
    Image.fromarray(_noise(40, 40, 1), "L"),
    Image.fromarray(_noise(40, 40), "RGB"),
    Image.fromarray(_noise(40, 40, 4), "RGBA"),
    Image.fromarray(_noise(50, 30), "RGB"),
    Image.fromarray(_noise(30, 70), "RGB").convert("P"),
    Image.fromarray(_noise(20, 30, 1).astype(np.uint16) * 257).convert("I;16"),
], ids=["L", "RGB", "RGBA", "wide", "P", "I;16"])
def test_shape_and_dtype(image):
    out = ImageTransform(24, CLIP_MEAN, CLIP_STD)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_constant_colour_is_exact():
    colour = (200, 17, 99)
    out = ImageTransform(16, CLIP_MEAN, CLIP_STD)(Image.new("RGB", (37, 23), colour))
    for c in range(3):
        expected = (colour[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[c], torch.full((16, 16), expected), rtol=0, atol=1e-5)


def test_grey_source_is_replicated_for_rgb_model():
    out = ImageTransform(8, 0.5, 0.5)(Image.new("L", (8, 8), 51))
    torch.testing.assert_close(out, torch.full((3, 8, 8), (51 / 255 - 0.5) / 0.5))


def test_sixteen_bit_image_is_scaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).convert("I;16")  # 128 * 257
    out = ImageTransform(8, 0.0, 1.0)(img)
    torch.testing.assert_close(out, torch.full((3, 8, 8), 128 / 255))


def test_centre_crop_takes_the_middle():
    # 90x30: left and right thirds red, middle third blue; the crop is the 30x30 middle.
    arr = np.zeros((30, 90, 3), dtype=np.uint8)
    arr[:, :30, 0] = arr[:, 60:, 0] = 255
    arr[:, 30:60, 2] = 255
    out = ImageTransform(30, 0.0, 1.0)(Image.fromarray(arr))
    assert torch.equal(out[0], torch.zeros(30, 30)) and torch.equal(out[2], torch.ones(30, 30))
    tall = ImageTransform(30, 0.0, 1.0)(Image.fromarray(np.ascontiguousarray(arr.transpose(1, 0, 2))))
    assert torch.equal(tall[2], torch.ones(30, 30))


def test_transform_for_configs_and_one_channel_model():
    cfg = make_config("tiny")
    for source in (cfg, cfg.vision_config, tower_config(cfg, "vision"), build("tiny", kind="vision")):
        t = transform_for(source)
        assert (t.image_size, t.num_channels) == (32, 3)
        assert t.mean == pytest.approx(CLIP_MEAN) and t.std == pytest.approx(CLIP_STD)
    grey = tower_config(cfg, "vision")
    grey.num_channels = 1
    t = transform_for(grey)
    out = t(Image.fromarray(_noise(40, 50)))
    assert out.shape == (1, 32, 32)
    with pytest.raises(ClipforgeError, match="image_size"):
        transform_for(cfg.text_config)


def test_to_pixel_values_batches():
    t = ImageTransform(16)
    batch = to_pixel_values([Image.new("RGB", (20, 30)), Image.new("L", (16, 16))], t)
    assert batch.shape == (2, 3, 16, 16)
    assert to_pixel_values([], t).shape == (0, 3, 16, 16)


def test_preprocessor_config_matches_hugging_face(tmp_path):
    cfg = make_config("tiny")
    path = save_preprocessor_config(cfg, tmp_path)
    data = json.loads(path.read_text())
    assert data["image_processor_type"] == "CLIPImageProcessor"
    assert data["size"] == {"shortest_edge": 32} and data["crop_size"] == {"height": 32, "width": 32}
    assert data["resample"] == 3 and data["rescale_factor"] == pytest.approx(1 / 255)
    assert data["image_mean"] == list(CLIP_MEAN) and data["image_std"] == list(CLIP_STD)
    assert all(data[k] for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers import CLIPImageProcessor
            processor = CLIPImageProcessor.from_pretrained(str(tmp_path), local_files_only=True)
    except ImportError as err:  # a build of transformers that insists on torchvision
        pytest.skip(f"CLIPImageProcessor unavailable: {err}")
    # Sizes whose crop surplus is even: for an odd surplus HF floors the crop offset where
    # torchvision (OpenAI, open_clip, and this module) rounds, a one-pixel shift.
    images = [Image.fromarray(_noise(64, 48)), Image.fromarray(_noise(100, 80)), Image.fromarray(_noise(32, 32)),
              Image.new("RGB", (40, 90), (9, 99, 199))]
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = to_pixel_values(images, transform_for(cfg))
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-2)
