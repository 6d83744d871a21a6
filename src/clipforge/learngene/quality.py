"""`Quality`: what an Aux-Net (or any CLIP) is worth on held-out data, as an `eval_fn` for `train()`.

Extraction measures the Aux-Net with it at intervals and at the end, beside the ancestry on the same
split (docs/methods.md B.3b): retrieval recall@1 both ways on held-out image-text pairs and zero-shot
top-1 on a labelled set. Keys are CLIP_benchmark's names (`image_retrieval_recall@1`: text → image),
plus their mean. A vision- or text-only model is measured beside a `partner` CLIP's other tower
(`paired_clip`: the model's tower and the partner's other tower as one CLIP), the way one-tower
descendants are pre-trained (`distill.TowerStep`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

MEAN_R1 = "mean_retrieval_recall@1"


def paired_clip(tower: nn.Module, partner: nn.Module) -> nn.Module:
    """A `CLIPModel` made of a one-tower model's tower and projection and `partner`'s other tower, projection
    and logit scale. The modules are shared, not copied: the result is a view for measuring `tower`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from ..errors import ClipforgeError
    from ..models.encode import model_kind

    kind = model_kind(tower)
    if kind == "clip":
        return tower
    if partner is None or model_kind(partner) != "clip":
        raise ClipforgeError(f"measuring a {kind}-only model needs a partner CLIP for the other modality")
    pc = partner.config
    vision = tower.config if kind == "vision" else pc.vision_config
    text = tower.config if kind == "text" else pc.text_config
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=pc.projection_dim,
                        logit_scale_init_value=pc.logit_scale_init_value)
    with torch.device("meta"):  # every module is replaced below: allocating them would be waste
        clip = CLIPModel(config)
    parts = {"vision": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}
    for t, names in parts.items():
        for name in names:
            setattr(clip, name, getattr(tower if t == kind else partner, name))
    clip.logit_scale = partner.logit_scale
    return clip


class Quality:
    """`quality(model, step=0) -> metrics` on fixed held-out data (datasets of `Sample`s); a one-tower model
    is measured beside `partner`'s other tower (`paired_clip`)."""

    def __init__(self, retrieval_data: Any, zeroshot_data: Any | None = None, partner: nn.Module | None = None) -> None:
        self.retrieval_data, self.zeroshot_data, self.partner = retrieval_data, zeroshot_data, partner

    def __call__(self, model: nn.Module, step: int = 0) -> dict[str, float]:
        from ..eval.tasks import retrieval, zeroshot_classification

        was_training = model.training
        partner_training = self.partner.training if self.partner is not None else False
        tower, model = model, paired_clip(model, self.partner)
        model.eval()
        try:
            r = retrieval(model, self.retrieval_data, ks=(1,))
            out = {"image_retrieval_recall@1": r["image_retrieval_recall@1"],
                   "text_retrieval_recall@1": r["text_retrieval_recall@1"]}
            out[MEAN_R1] = (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"]) / 2
            if self.zeroshot_data is not None:
                out["zeroshot_acc1"] = zeroshot_classification(model, self.zeroshot_data)["acc1"]
        finally:
            model.train(was_training)
            if self.partner is not None and model is not tower:
                self.partner.train(partner_training)  # a paired CLIP shares the partner's modules
        return out

    @classmethod
    def builtin(cls, image_size: int, scenes: int = 500, fashion: int = 1000, caption_style: str = "full",
                seed: int = 3) -> Quality:
        """Held-out built-in data: `scenes` test-split scenes (retrieval) and the first `fashion` Fashion-MNIST
        test images (zero-shot; 0: none)."""
        from ..data.cached import Cached
        from ..data.classification import FashionMNIST
        from ..data.scenes import ScenesDataset

        ret = Cached(ScenesDataset(split="test", size=scenes, seed=seed, image_size=image_size,
                                   caption_style=caption_style),
                     f"scenes[test,seed{seed},n{scenes},{image_size}px,{caption_style}]")
        zs = FashionMNIST(split="test", limit=fashion) if fashion else None
        if zs is not None:
            zs.name = f"fashion-mnist[test,n{fashion}]"
        return cls(ret, zs)

    def describe(self) -> dict[str, Any]:
        name = lambda d: getattr(d, "name", type(d).__name__) if d is not None else None  # noqa: E731
        return {"retrieval": name(self.retrieval_data), "retrieval_size": len(self.retrieval_data),
                "zeroshot": name(self.zeroshot_data),
                "zeroshot_size": len(self.zeroshot_data) if self.zeroshot_data is not None else 0}
