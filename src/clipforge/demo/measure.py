"""One record per model of the family, measured the same way whatever its kind.

CLIPs and CLIP-MoEs: the built-in suite (Fashion-MNIST zero-shot, held-out scenes retrieval, MMVP-
style pairs). Vision-only: Fashion-MNIST linear probe (a vision tower alone cannot do zero-shot).
Text-only: object counting from captions, a linear probe on frozen text features. Every model: parameters
stored and active per token, analytic FLOPs per image / caption, measured forward latency.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..cost import model_costs
from ..eval.suite import SuiteConfig, evaluate_builtin, headline
from ..models import io
from ..models.encode import model_kind
from ..run import cached_record

CAPTION_TOKENS = 16
COUNT_TEST = 1000  # test captions of the text descendants' count probe


def measure(name: str, model_dir: Path, suite: SuiteConfig, cache: Path, probe_train: int = 5000) -> dict[str, Any]:
    """The record of one model (cached in `cache/<name>.json`, keyed by the model directory and suite)."""
    path = cache / f"{name.replace(' ', '_').replace('/', '_')}.json"
    key = {"model": str(Path(model_dir).resolve()), "suite": suite.to_dict(), "probe_train": probe_train,
           "mtime": (Path(model_dir) / io.WEIGHTS).stat().st_mtime_ns}
    return cached_record(path, key, lambda: _measure(name, model_dir, suite, probe_train))


def _measure(name: str, model_dir: Path, suite: SuiteConfig, probe_train: int) -> dict[str, Any]:
    from ..distributed import default_device

    model = io.load(model_dir).to(default_device()).eval()  # --device; batches follow the model
    kind = model_kind(model)
    t = time.perf_counter()
    rec: dict[str, Any] = {"name": name, "kind": kind, "model": str(model_dir)}
    if kind == "clip":
        rec["metrics"] = evaluate_builtin(model, suite)
        rec["headline"] = headline(rec["metrics"])
    elif kind == "vision":
        from ..data.classification import FashionMNIST
        from ..eval.probes import linear_probe

        r = linear_probe(model, FashionMNIST(split="train", limit=probe_train), FashionMNIST(split="test",
                                                                                            limit=suite.fashion))
        rec["metrics"] = {"fashion_mnist_linear_probe": r}
        rec["headline"] = {"fmnist_probe_acc1": r["acc1"]}
    else:
        from ..data.scenes import count_captions
        from ..eval.probes import text_linear_probe

        r = text_linear_probe(model, count_captions("train", probe_train, 0), count_captions("test", COUNT_TEST, 1))
        rec["metrics"] = {"scenes_count_text_probe": r}
        rec["headline"] = {"count_probe_acc1": r["acc1"]}
    rec["eval_s"] = round(time.perf_counter() - t, 1)
    rec["cost"] = model_costs(model, caption_tokens=CAPTION_TOKENS)
    return rec


def item_counts(cfg: Any) -> dict[str, int]:
    """How many test items each metric family was measured on (the verdicts' binomial SEs)."""
    return {"scenes": cfg.suite.scenes, "fmnist": cfg.suite.fashion or 10_000, "count": COUNT_TEST}
