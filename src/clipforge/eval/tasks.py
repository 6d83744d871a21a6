"""Model-level evaluation tasks; each returns a JSON-ready dict of floats.

* `zeroshot_classification`: CLIP_benchmark's protocol (prompt-ensembled class embeddings,
  logits = 100 · image · W).
* `retrieval`: image-text recall@k in both directions.
* `mmvp_diagnostic`: MMVP-style pair accuracy on synthetic scenes (chance 0.25).
* `linear_probe`, `text_linear_probe`, `finetune_classifier`: in `clipforge.eval.probes`.

Metric keys lie in [0, 1]; see `clipforge.eval.metrics` for definitions and the tie rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ClipforgeError
from ..models.encode import has_text, has_vision
from .embed import embed_images, embed_texts
from .metrics import (
    classification_metrics,
    pair_accuracy,
    retrieval_metrics,
    zeroshot_classifier,
)
from .prompts import DEFAULT_TEMPLATES

Device = str | torch.device | None


def _need(model: nn.Module, vision: bool, text: bool, task: str) -> None:
    if vision and not has_vision(model):
        raise ClipforgeError(f"{task} needs a model with a vision tower, got {type(model).__name__}")
    if text and not has_text(model):
        raise ClipforgeError(f"{task} needs a model with a text tower, got {type(model).__name__}")


def _label(item: Any) -> int:
    label = getattr(item, "label", None)
    if label is None and isinstance(item, (tuple, list)) and len(item) > 1:
        label = item[1]
    if label is None:
        raise ClipforgeError("a dataset item has no class label")
    return int(label)


class _Recorder:
    """A read-through view of a dataset that keeps `fn(item)` for every item read, so one pass can
    both embed images and collect labels or captions."""

    def __init__(self, ds: Any, fn: Callable[[Any], Any]):
        self.ds, self.fn, self.seen = ds, fn, []

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        item = self.ds[i]
        self.seen.append(self.fn(item))
        return item


def _format(template: str | Callable[[str], str], classname: str) -> str:
    # Templates may be "a photo of a {}." (clipforge) or "a photo of a {c}." (CLIP_benchmark).
    return template(classname) if callable(template) else template.format(classname, c=classname)


def _n_classes(*datasets: Any, labels: Sequence[Tensor] = ()) -> int:
    for ds in datasets:
        if getattr(ds, "classnames", None):
            return len(ds.classnames)
    return int(max(int(t.max()) for t in labels)) + 1


def zeroshot_classification(
    model: nn.Module,
    dataset: Any,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str | Callable[[str], str]] | None = None,
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, float]:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall on a labelled dataset.

    Class names and templates default to the dataset's (templates: "a photo of a {c}.").
    """
    _need(model, True, True, "zero-shot classification")
    classnames = list(classnames or getattr(dataset, "classnames", None) or [])
    templates = list(templates or getattr(dataset, "templates", None) or DEFAULT_TEMPLATES)
    if not classnames:
        raise ClipforgeError("zero-shot classification needs class names (the dataset has none; "
                             "open users' data with a label_key, or pass classnames)")
    texts = [_format(t, c) for c in classnames for t in templates]
    txt = embed_texts(model, texts, device=device).view(len(classnames), len(templates), -1)
    weights = zeroshot_classifier(list(txt))
    rec = _Recorder(dataset, _label)
    img = embed_images(model, rec, batch_size=batch_size, device=device)
    top = max(rec.seen, default=0)
    if top >= len(classnames):
        raise ClipforgeError(f"the dataset has class label {top}, but only {len(classnames)} class names")
    return classification_metrics(100.0 * img @ weights, torch.tensor(rec.seen))


def retrieval(
    model: nn.Module,
    dataset: Any,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, float]:
    """Image-text retrieval recall@k; each `Sample` contributes one image and all its captions."""
    _need(model, True, True, "retrieval")
    if not getattr(dataset, "has_captions", True):
        why = getattr(dataset, "no_captions", "")
        raise ClipforgeError(f"{getattr(dataset, 'name', 'the dataset')} has no captions"
                             f"{f' ({why})' if why else ''}; retrieval needs image-text pairs")
    rec = _Recorder(dataset, lambda s: list(s.captions))
    img = embed_images(model, rec, batch_size=batch_size, device=device)
    if any(not caps for caps in rec.seen):
        raise ClipforgeError(f"{getattr(dataset, 'name', 'the dataset')}: a sample has no captions; "
                             "retrieval needs image-text pairs")
    texts = [c for caps in rec.seen for c in caps]
    t2i = torch.tensor([i for i, caps in enumerate(rec.seen) for _ in caps], dtype=torch.long)
    txt = embed_texts(model, texts, device=device)
    return retrieval_metrics(img, txt, t2i, ks=ks)


def mmvp_diagnostic(
    model: nn.Module,
    pair_types: Sequence[str] | None = None,
    n: int = 200,
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 256,
    device: Device = None,
) -> dict[str, float]:
    """MMVP-style pair accuracy per synthetic pair type, plus their unweighted ``mean``.

    Each pair holds two images differing in one visual property and two captions naming it; a pair
    is right iff both images prefer their own caption (chance 0.25). Images are drawn at the model's
    input size unless `image_size` is given.
    """
    from ..data.scenes import (  # imported late: an optional sibling module
        PAIR_TYPES,
        diagnostic_pairs,
    )

    _need(model, True, True, "the MMVP diagnostic")
    size = image_size or int(model.config.vision_config.image_size)
    out: dict[str, float] = {}
    for pt in list(pair_types or PAIR_TYPES):
        pairs = diagnostic_pairs(pt, n, seed, size)
        images = [im for p in pairs for im in (p.image_a, p.image_b)]
        texts = [c for p in pairs for c in (p.caption_a, p.caption_b)]
        img = embed_images(model, images, batch_size=batch_size, device=device).view(len(pairs), 2, -1)
        txt = embed_texts(model, texts, device=device).view(len(pairs), 2, -1)
        out[pt] = pair_accuracy(torch.einsum("pid,pjd->pij", img, txt))
    out["mean"] = sum(out.values()) / len(out)
    return out
