"""The v2 evaluation, read once per process and embedded once per model.

Held-out test scenes (test split, seed 1: unseen shape-colour combinations) are rendered once; their
images are embedded once per model and their captions in every style (dense, full, alt), so retrieval in
three styles costs one image pass. MMVP-style pairs and Fashion-MNIST test images are read once too.
Texts are embedded sorted by length with the padding trimmed per batch: CLIP's text tower is causal and
pools at the end-of-text token, so the padding after it changes nothing (`test_trimmed_texts_embed_alike`).

A model's embeddings (`embed`) are a dict of tensors; `metrics` turns them into the headline numbers, and
`ensemble` averages several models' (normalised, renormalised): the experts' embedding mean, an upper
bound on what the stage models hold together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

STYLES = ("dense", "full", "alt")
KS = (1, 5, 10)
Embeddings = dict[str, Tensor]


@dataclass
class EvalSet:
    """Every evaluation input, read once: scene images and their captions per style, MMVP pairs, Fashion-MNIST."""

    scenes: list[Any]  # PIL images
    captions: dict[str, list[str]]  # style -> one caption per scene
    pairs: dict[str, tuple[list[Any], list[str]]]  # attribute -> (2P images, 2P captions), a then b per pair
    fashion: Any  # the (cached) Fashion-MNIST test images, or None
    fashion_labels: Tensor | None
    fashion_texts: list[str]  # class c, template t at c * templates + t
    fashion_classes: int
    fashion_templates: int

    def items(self, metric: str) -> int:
        """How many test items a headline metric is a fraction of (the binomial SE's n)."""
        if metric.startswith("fmnist"):
            return int(len(self.fashion_labels)) if self.fashion_labels is not None else 0
        if metric.startswith("mmvp"):
            return len(next(iter(self.pairs.values()))[1]) // 2
        return len(self.scenes)


def build(scenes: int, pairs: int, fashion: int | None, image_size: int, styles: tuple[str, ...] = STYLES,
          seed: int = 0) -> EvalSet:
    """The evaluation sets of the built-in suite (`clipforge.eval.suite`'s seeds), read into memory."""
    from clipforge.data.cached import Cached
    from clipforge.data.classification import FashionMNIST
    from clipforge.data.scenes import PAIR_TYPES, ScenesDataset, diagnostic_pairs
    from clipforge.eval.tasks import _format

    test = ScenesDataset(split="test", size=scenes, seed=seed + 1, image_size=image_size)
    images = [test[i].image for i in range(scenes)]
    captions = {}
    for style in styles:
        styled = ScenesDataset(split="test", size=scenes, seed=seed + 1, image_size=image_size, caption_style=style)
        captions[style] = [styled.captions_at(i)[0] for i in range(scenes)]
    mmvp = {}
    for pt in PAIR_TYPES:
        ps = diagnostic_pairs(pt, pairs, seed, image_size)
        mmvp[pt] = ([im for p in ps for im in (p.image_a, p.image_b)], [c for p in ps for c in (p.caption_a,
                                                                                              p.caption_b)])
    fm = Cached(FashionMNIST(split="test", limit=fashion), "fashion-mnist test")
    texts = [_format(t, c) for c in fm.classnames for t in fm.templates]
    labels = torch.tensor([s.label for s in fm.items])
    return EvalSet(images, captions, mmvp, fm, labels, texts, len(fm.classnames), len(fm.templates))


def embed_texts_trimmed(model: nn.Module, texts: list[str], batch_size: int = 256) -> Tensor:
    """`clipforge.eval.embed.embed_texts`, sorted by length with each batch cut after its longest caption."""
    from clipforge.eval.embed import eval_mode, model_context_length
    from clipforge.models.encode import text_features
    from clipforge.models.tokenizer import tokenize, tokenizer_for

    tok = tokenizer_for(model)
    ctx = model_context_length(model)
    ids = tokenize(texts, ctx, tok)
    lengths = torch.tensor([len(x) for x in tok(list(texts), truncation=True, max_length=ctx)["input_ids"]])
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(texts), 0)
    with eval_mode(model):
        for a in range(0, len(texts), batch_size):
            idx = order[a:a + batch_size]
            feats = torch.nn.functional.normalize(text_features(model, ids[idx, :int(lengths[idx].max())]).float(),
                                                  dim=-1)
            if out.shape[1] == 0:
                out = torch.empty(len(texts), feats.shape[1])
            out[idx] = feats
    return out


def embed(model: nn.Module, es: EvalSet) -> Embeddings:
    """Every embedding the metrics need, for one model."""
    from clipforge.eval.embed import embed_images

    out: Embeddings = {"scenes": embed_images(model, es.scenes, progress=False)}
    for style, caps in es.captions.items():
        out[f"text/{style}"] = embed_texts_trimmed(model, caps)
    for pt, (images, caps) in es.pairs.items():
        out[f"pair_img/{pt}"] = embed_images(model, images, progress=False)
        out[f"pair_txt/{pt}"] = embed_texts_trimmed(model, caps)
    if es.fashion is not None:
        out["fashion_img"] = embed_images(model, es.fashion, progress=False)
        out["fashion_txt"] = embed_texts_trimmed(model, es.fashion_texts)
    return out


def ensemble(embs: list[Embeddings]) -> Embeddings:
    """The renormalised mean of several models' normalised embeddings, key by key."""
    return {k: torch.nn.functional.normalize(torch.stack([e[k] for e in embs]).mean(0), dim=-1) for k in embs[0]}


def metrics(emb: Embeddings, es: EvalSet) -> dict[str, float]:
    """The headline numbers (fractions): `{style}_t2i_r{k}`, `{style}_i2t_r{k}`, `mmvp_{attr}`, `mmvp_mean`,
    `fmnist_acc1`."""
    from clipforge.eval.metrics import classification_metrics, pair_accuracy, retrieval_metrics, zeroshot_classifier

    flat: dict[str, float] = {}
    n = len(es.scenes)
    for style in es.captions:
        r = retrieval_metrics(emb["scenes"], emb[f"text/{style}"], torch.arange(n), ks=KS)
        for k in KS:
            flat[f"{style}_t2i_r{k}"] = r[f"image_retrieval_recall@{k}"]
            flat[f"{style}_i2t_r{k}"] = r[f"text_retrieval_recall@{k}"]
    accs = {}
    for pt in es.pairs:
        img, txt = emb[f"pair_img/{pt}"], emb[f"pair_txt/{pt}"]
        p = img.shape[0] // 2
        accs[pt] = pair_accuracy(torch.einsum("pid,pjd->pij", img.view(p, 2, -1), txt.view(p, 2, -1)))
    flat.update({f"mmvp_{pt}": v for pt, v in accs.items()})
    if accs:
        flat["mmvp_mean"] = sum(accs.values()) / len(accs)
    if "fashion_img" in emb:
        w = zeroshot_classifier(list(emb["fashion_txt"].view(es.fashion_classes, es.fashion_templates, -1)))
        flat["fmnist_acc1"] = classification_metrics(100.0 * emb["fashion_img"] @ w, es.fashion_labels)["acc1"]
    return flat


def costs(model: nn.Module) -> dict[str, int]:
    """Parameters stored and active per token, analytic forward FLOPs per image (no latency: it is noise on a
    shared machine)."""
    from clipforge.cost import _numel, active_params, flops_per_sample

    return {"params_stored": _numel(model.parameters()), "params_active_per_token": active_params(model),
            "flops_per_image": flops_per_sample(model, "image")}
