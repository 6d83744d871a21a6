"""The CLIP_benchmark adapter: its recall@k (computed as CLIP_benchmark computes it) equals clipforge's."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.data.base import Sample
from clipforge.eval.clip_benchmark import MODEL_TYPE, load_clip_benchmark, main, register
from clipforge.eval.tasks import retrieval, zeroshot_classification
from clipforge.models import io
from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel
from clipforge.models.clip_moe.moe_layer import MoEFFN
from clipforge.models.registry import build, make_config
from clipforge.models.tokenizer import tokenize

KS = [1, 3, 5]
WORDS = ["red", "green", "blue", "square", "circle", "small", "large", "striped", "dotted", "bright"]


def _images(n: int, seed: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    # Odd sizes and aspect ratios, so the resize and centre crop are exercised, not skipped.
    return [Image.fromarray(torch.randint(0, 256, (30 + 3 * i, 41, 3), generator=g, dtype=torch.uint8).numpy())
            for i in range(n)]


def _retrieval_set(n: int = 11) -> list[Sample]:
    """n images, 1 to 3 captions each (an image may own several captions, as in COCO)."""
    return [Sample(image=im, captions=[f"a {WORDS[(i + j) % 10]} {WORDS[(3 * i + j) % 10]} thing {j}"
                                       for j in range(1 + i % 3)])
            for i, im in enumerate(_images(n, seed=3))]


def _moe():
    cfg = CLIPMoEConfig.from_dense(make_config("tiny"), expert_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = CLIPMoEModel(cfg).eval()
        for m in model.modules():
            if isinstance(m, MoEFFN):
                m.router.weight.data.mul_(6.0)
    return model


@pytest.fixture(scope="module", params=["dense", "moe"])
def model_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    model = build("tiny", seed=2) if request.param == "dense" else _moe()
    io.save(model, d / "model", provenance={"source": "test"})
    return d / "model"


def clip_benchmark_retrieval(model, transform, tokenizer, samples, batch_size: int, recall_k_list):
    """CLIP_benchmark's `zeroshot_retrieval.evaluate`, step for step (no autocast: amp=False).

    Source read: LAION-AI/CLIP_benchmark, clip_benchmark/metrics/zeroshot_retrieval.py at commit
    48de38c ("fix amp autocast warnings (#138)"). Per batch of (images, list of captions per image):
    tokenize all the batch's captions, `F.normalize(model.encode_image(images))`,
    `F.normalize(model.encode_text(tokens))`, and record each caption's image index. Then
    `scores = texts_emb @ images_emb.t()`, `positive_pairs[text, its image] = True`, and per k:
    image_retrieval_recall@k = mean over texts of [recall_at_k(scores, positive_pairs) > 0],
    text_retrieval_recall@k = the same on the transposes, where recall_at_k takes `topk(scores, k)`,
    one-hot encodes it and counts the positives among the top k (divided by the positives: only > 0
    matters). `batchify` splits the rows into chunks of the first batch's size, as there.
    """
    images_emb, texts_emb, texts_image_index = [], [], []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        batch_images = torch.stack([transform(s.image) for s in batch])
        batch_texts = [s.captions for s in batch]
        inds = torch.arange(start, start + len(batch))
        tok = tokenizer([t for texts in batch_texts for t in texts])
        texts_image_index.extend(int(i) for i, texts in zip(inds, batch_texts) for _ in texts)
        with torch.no_grad():
            images_emb.append(F.normalize(model.encode_image(batch_images), dim=-1))
            texts_emb.append(F.normalize(model.encode_text(tok), dim=-1))
    first_batch = len(images_emb[0])
    images_emb, texts_emb = torch.cat(images_emb), torch.cat(texts_emb)
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True

    def recall_at_k(scores, positive_pairs, k):
        nb_texts, nb_images = scores.shape
        topk_indices = torch.topk(scores, k, dim=1)[1]
        nb_positive = positive_pairs.sum(dim=1)
        topk_indices_onehot = F.one_hot(topk_indices, num_classes=nb_images)
        positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
        nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
        return nb_true_positive / nb_positive

    def batchify(func, X, Y, k):
        return torch.cat([func(X[a:a + first_batch], Y[a:a + first_batch], k) for a in range(0, len(X), first_batch)])

    metrics = {}
    for k in recall_k_list:
        image_hits = batchify(recall_at_k, scores, positive_pairs, k) > 0
        text_hits = batchify(recall_at_k, scores.T, positive_pairs.T, k) > 0
        metrics[f"image_retrieval_recall@{k}"] = image_hits.float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = text_hits.float().mean().item()
    return metrics


def test_adapter_recall_equals_clipforge_retrieval(model_dir):
    model, transform, tokenizer = load_clip_benchmark(model_dir, "cpu")
    samples = _retrieval_set()
    theirs = clip_benchmark_retrieval(model, transform, tokenizer, samples, batch_size=4, recall_k_list=KS)
    ours = retrieval(io.load(model_dir), samples, ks=KS)
    assert set(theirs) == set(ours)
    for key, value in ours.items():  # float32 means there, float64 here
        assert theirs[key] == pytest.approx(value, abs=1e-6), (key, theirs, ours)
    # A random tiny model ranks neither perfectly nor hopelessly: the comparison has something to compare.
    assert 0 < ours["image_retrieval_recall@3"] < 1


def test_adapter_interface(model_dir):
    model, transform, tokenizer = load_clip_benchmark(model_dir, "cpu")
    assert not model.training
    tok = tokenizer(["a red square", "a blue circle that is much too long " * 5])
    assert tok.dtype == torch.long and tok.shape == (2, 16)  # the tiny model's context
    assert torch.equal(tok, tokenize(["a red square", "a blue circle that is much too long " * 5], 16))
    pixels = transform(_images(1, seed=0)[0])
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    img, txt = model.encode_image(pixels[None]), model.encode_text(tok)
    assert img.shape == (1, 32) and txt.shape == (2, 32)
    torch.testing.assert_close(model.encode_text(tok, normalize=True), F.normalize(txt, dim=-1))
    # open_clip's forward: normalised features and the logit scale.
    i, t, scale = model(pixels[None], tok)
    torch.testing.assert_close(i.norm(dim=-1), torch.ones(1))
    assert scale.item() > 0


def test_zeroshot_classifier_through_the_adapter_matches_clipforge(tmp_path):
    """CLIP_benchmark's zero_shot_classifier + top-1 (clip_benchmark/metrics/zeroshot_classification.py):
    per class, mean of normalised template embeddings, renormalised; logits = 100 · image · W."""
    classes, templates = ["red", "green", "blue"], ["a photo of a {c}.", "a {c} thing."]
    images = _images(9, seed=5)
    labels = torch.tensor([i % 3 for i in range(9)])

    class DS:
        classnames = classes

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return Sample(image=images[i], captions=[], label=int(labels[i]))

    io.save(build("tiny", seed=6), tmp_path / "m", provenance={"source": "test"})
    model, transform, tokenizer = load_clip_benchmark(tmp_path / "m")
    ours = zeroshot_classification(io.load(tmp_path / "m"), DS(), templates=templates)
    with torch.no_grad():
        weights = []
        for c in classes:
            emb = F.normalize(model.encode_text(tokenizer([t.format(c=c) for t in templates])), dim=-1).mean(dim=0)
            weights.append(emb / emb.norm())
        weights = torch.stack(weights, dim=1)
        feats = F.normalize(model.encode_image(torch.stack([transform(im) for im in images])), dim=-1)
        pred = (100.0 * feats @ weights).argmax(dim=1)
    assert (pred == labels).float().mean().item() == pytest.approx(ours["acc1"], abs=1e-6)


def test_register_plugs_into_clip_benchmark_model_table(model_dir, monkeypatch):
    """A stand-in for `clip_benchmark.models` with the real module's table and `load_clip` (read at 48de38c)."""
    fake = types.ModuleType("clip_benchmark.models")
    fake.TYPE2FUNC = {"open_clip": lambda **kw: None}
    fake.MODEL_TYPES = list(fake.TYPE2FUNC.keys())
    choices = fake.MODEL_TYPES  # what clip_benchmark.cli binds with `from clip_benchmark.models import MODEL_TYPES`

    def load_clip(model_type, model_name, pretrained, cache_dir, device="cuda"):
        assert model_type in fake.MODEL_TYPES, f"model_type={model_type} is invalid!"
        return fake.TYPE2FUNC[model_type](model_name=model_name, pretrained=pretrained, cache_dir=cache_dir,
                                          device=device)

    fake.load_clip = load_clip
    pkg = types.ModuleType("clip_benchmark")
    pkg.models = fake
    monkeypatch.setitem(sys.modules, "clip_benchmark", pkg)
    monkeypatch.setitem(sys.modules, "clip_benchmark.models", fake)
    register()
    register()  # idempotent
    assert choices == ["open_clip", MODEL_TYPE]
    model, transform, tokenizer = fake.load_clip(model_type=MODEL_TYPE, model_name="clipforge",
                                                 pretrained=str(model_dir), cache_dir=None, device="cpu")
    assert hasattr(model, "encode_image") and hasattr(model, "encode_text") and callable(transform)


def test_missing_clip_benchmark_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "clip_benchmark", None)
    monkeypatch.setitem(sys.modules, "clip_benchmark.models", None)
    assert main(["eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CLIP_benchmark is not importable" in err
