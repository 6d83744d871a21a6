"""CLIP_benchmark adapter: any clipforge model (dense, one tower, descendant, CLIP-MoE) as CLIP_benchmark wants it.

CLIP_benchmark (github.com/LAION-AI/CLIP_benchmark) loads a model through a
function in `clip_benchmark.models.TYPE2FUNC` chosen by `--model_type`, called as
`f(model_name=..., pretrained=..., cache_dir=..., device=...)` and returning `(model, transform,
tokenizer)`: `model.encode_image(images)` and `model.encode_text(tokenizer(texts).to(device))`
(open_clip style), `transform(PIL image) -> tensor`, `tokenizer(list[str]) -> LongTensor`.

`load_clip_benchmark(model_dir, device)` returns that triple; `register()` adds the type
"clipforge" to CLIP_benchmark's table (its argparse `choices` and `load_clip` read the same list
and dict objects, so registering before its CLI parses is enough). Run CLIP_benchmark with it:

    python -m clipforge.eval.clip_benchmark eval --model_type clipforge --model clipforge \\
        --pretrained MODEL_DIR --dataset cifar10 --dataset_root data/cifar10 --output result.json

The embeddings are the ones clipforge's own evaluation computes (`clipforge.eval.embed`): the same
image preprocessing, tokenizer and projected features, so the metrics agree with `clipforge eval`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import ClipforgeError
from ..models.encode import has_text, has_vision, image_features, text_features
from .embed import image_transform, model_context_length

MODEL_TYPE = "clipforge"


class CLIPBenchmarkModel(nn.Module):
    """open_clip's interface over a clipforge model: `encode_image`, `encode_text`, `logit_scale`.

    Embeddings are projected and, as in open_clip, unnormalised unless `normalize=True`
    (CLIP_benchmark normalises them itself).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def logit_scale(self) -> Tensor:
        scale = getattr(self.model, "logit_scale", None)
        return scale if scale is not None else torch.tensor(100.0).log()

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        if not has_vision(self.model):
            raise ClipforgeError(f"{type(self.model).__name__} has no vision tower: it cannot encode images")
        x = image_features(self.model, image.to(_dtype(self.model)))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
        if not has_text(self.model):
            raise ClipforgeError(f"{type(self.model).__name__} has no text tower: it cannot encode text")
        # No attention mask, as clipforge's embed_texts: the causal tower pools at the end-of-text token.
        x = text_features(self.model, text)
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def forward(self, image: Tensor | None = None, text: Tensor | None = None):
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


class CLIPBenchmarkTokenizer:
    """list[str] -> LongTensor [N, context]: the model's own tokenizer, as clipforge's evaluation uses it."""

    def __init__(self, model: nn.Module) -> None:
        from ..models.tokenizer import tokenizer_for

        self.tokenizer = tokenizer_for(model)
        self.context_length = model_context_length(model)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        from ..models.tokenizer import tokenize

        texts = [texts] if isinstance(texts, str) else list(texts)
        return tokenize(texts, context_length or self.context_length, self.tokenizer)

    def __len__(self) -> int:
        return len(self.tokenizer)


def load_clip_benchmark(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[CLIPBenchmarkModel, Callable[[Image.Image], Tensor], CLIPBenchmarkTokenizer | None]:
    """`(model, transform, tokenizer)` for CLIP_benchmark from a clipforge / Hugging Face model directory.

    A text-only model has no transform (None); a vision-only model no tokenizer (None).
    """
    from ..models.io import load

    model = load(model_dir, device=device).eval()
    transform = image_transform(model) if has_vision(model) else None
    tokenizer = CLIPBenchmarkTokenizer(model) if has_text(model) else None
    return CLIPBenchmarkModel(model).eval(), transform, tokenizer


def load_for_cli(model_name: str = MODEL_TYPE, pretrained: str = "", cache_dir: str | None = None,
                 device: str | torch.device = "cpu"):
    """CLIP_benchmark's loader signature: `--pretrained` is the model directory (`--model` is only a label)."""
    if not pretrained:
        raise ClipforgeError("--pretrained must name the clipforge model directory")
    return load_clip_benchmark(pretrained, device)


def register() -> None:
    """Add model type "clipforge" to CLIP_benchmark (`--model_type clipforge`); needs clip_benchmark installed."""
    try:
        import clip_benchmark.models as cbm
    except ImportError as e:
        raise ClipforgeError(f"CLIP_benchmark is not importable ({e}); install it (pip install clip_benchmark) "
                             "in an environment with open_clip_torch and torchvision") from None
    cbm.TYPE2FUNC[MODEL_TYPE] = load_for_cli
    if MODEL_TYPE not in cbm.MODEL_TYPES:
        cbm.MODEL_TYPES.append(MODEL_TYPE)  # in place: the CLI's `choices` is this very list


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipforge.eval.clip_benchmark ARGS`: CLIP_benchmark's own CLI, with "clipforge" registered."""
    try:
        register()
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    from clip_benchmark.cli import main as cb_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return int(cb_main() or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
