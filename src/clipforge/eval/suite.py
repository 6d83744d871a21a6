"""The built-in evaluation suite every clipforge CLIP is measured on (ancestry, CLIP-MoE, descendants).

Fashion-MNIST prompt accuracy (what a model fine-tuned on scenes may forget: the paper's ImageNet
column), held-out scenes retrieval (the paper's Flickr30k / COCO columns) and the MMVP-style pair
accuracy per attribute (the paper's MMVP table). The same sets at the same seeds for every model, so
numbers from different commands compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass
class SuiteConfig:
    """Sizes and seeds of the built-in evaluation sets."""

    scenes: int = 1000  # held-out test scenes (seed `seed + 1`, as the ancestry's evaluation)
    pairs: int = 200  # MMVP-style pairs per attribute
    fashion: int | None = None  # Fashion-MNIST test images (None: all 10k)
    seed: int = 0
    # scenes_retrieval: the "full" captions; _alt / _dense: the same held-out scenes captioned as web
    # alt-text and as dense captions (clipforge.data.scenes.styles), what CLIP-MoE's regime fine-tunes on.
    tasks: tuple[str, ...] = ("fashion_mnist", "scenes_retrieval", "scenes_retrieval_alt", "scenes_retrieval_dense",
                              "mmvp")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick(cls) -> SuiteConfig:
        return cls(scenes=64, pairs=20, fashion=200)


# suite task → caption style of its held-out scenes
RETRIEVAL_TASKS = {"scenes_retrieval": "full", "scenes_retrieval_alt": "alt", "scenes_retrieval_dense": "dense"}


def evaluate_builtin(model: nn.Module, cfg: SuiteConfig | None = None) -> dict[str, Any]:
    """Run the suite on a CLIP (or CLIP-MoE); returns {"fashion_mnist", "scenes_retrieval", "mmvp"}."""
    from ..data.classification import FashionMNIST
    from ..data.scenes import ScenesDataset
    from .tasks import mmvp_diagnostic, retrieval, zeroshot_classification

    cfg = cfg or SuiteConfig()
    size = int(model.config.vision_config.image_size)
    out: dict[str, Any] = {}
    if "fashion_mnist" in cfg.tasks:
        out["fashion_mnist"] = zeroshot_classification(model, FashionMNIST(split="test", limit=cfg.fashion))
    for task, style in RETRIEVAL_TASKS.items():
        if task in cfg.tasks:
            out[task] = retrieval(model, ScenesDataset(split="test", size=cfg.scenes, seed=cfg.seed + 1,
                                                       image_size=size, caption_style=style))
    if "mmvp" in cfg.tasks:
        out["mmvp"] = mmvp_diagnostic(model, n=cfg.pairs, seed=cfg.seed, image_size=size)
    return out


def available_tasks(cfg: SuiteConfig) -> tuple[SuiteConfig, list[str]]:
    """`cfg` without the tasks whose optional data are not installed here, and one notice per task left
    out (said at the start of a run, so a missing package never fails it at its end)."""
    from dataclasses import replace

    from ..data.classification import FashionMNIST
    from ..errors import ClipforgeError

    notices = []
    if "fashion_mnist" in cfg.tasks:
        try:
            FashionMNIST(split="test", limit=1)
        except ClipforgeError as e:
            notices.append(f"{e}; the evaluation leaves out Fashion-MNIST zero-shot")
            cfg = replace(cfg, tasks=tuple(t for t in cfg.tasks if t != "fashion_mnist"))
    return cfg, notices


def has_captions(dataset: Any) -> bool:
    """Whether a dataset's samples carry captions (a labelled image set may have none)."""
    return len(dataset) > 0 and bool(getattr(dataset, "has_captions", True))


def evaluate_data(model: nn.Module, test: Any) -> dict[str, Any]:
    """A CLIP on the user's held-out data: retrieval when it has captions, zero-shot when it has class labels
    (`classnames`); returns {"retrieval", "zeroshot"} (those that apply)."""
    from ..errors import ClipforgeError
    from .tasks import retrieval, zeroshot_classification

    out: dict[str, Any] = {}
    if has_captions(test):
        out["retrieval"] = retrieval(model, test)
    if getattr(test, "classnames", None):
        out["zeroshot"] = zeroshot_classification(model, test)
    if not out:
        raise ClipforgeError(f"{getattr(test, 'name', 'the evaluation data')}: neither captions nor class labels "
                             "to evaluate on (choose them with --caption-key / --label-key)")
    return out


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat numbers a table shows: FMNIST acc1, retrieval R@1/5/10 both ways, MMVP per attribute."""
    flat: dict[str, float] = {}
    if "fashion_mnist" in metrics:
        flat["fmnist_acc1"] = metrics["fashion_mnist"]["acc1"]
    if "zeroshot" in metrics:  # the user's labelled data (`evaluate_data`)
        flat["zeroshot_acc1"] = metrics["zeroshot"]["acc1"]
    for task in ("scenes_retrieval", "retrieval"):  # built-in scenes, or the user's pairs (`evaluate_data`)
        if task not in metrics:
            continue
        r = metrics[task]
        for k in (1, 5, 10):
            flat[f"t2i_r{k}"] = r[f"image_retrieval_recall@{k}"]
            flat[f"i2t_r{k}"] = r[f"text_retrieval_recall@{k}"]
    for task, prefix in (("scenes_retrieval_alt", "alt_"), ("scenes_retrieval_dense", "dense_")):
        if task in metrics:
            r = metrics[task]
            for k in (1, 5):
                flat[f"{prefix}t2i_r{k}"] = r[f"image_retrieval_recall@{k}"]
                flat[f"{prefix}i2t_r{k}"] = r[f"text_retrieval_recall@{k}"]
    for name, value in metrics.get("mmvp", {}).items():
        flat[f"mmvp_{name}"] = value
    return flat
