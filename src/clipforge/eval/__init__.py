"""Evaluation: metrics on embeddings, embedding helpers, model-level tasks, result files.

Sibling modules the tasks need (tokenizer, preprocessing, synthetic scenes) are imported only when a
task runs, so the metrics work on bare tensors without them.
"""

from ..files import write_json
from .embed import embed_images, embed_texts, model_context_length
from .metrics import (
    classification_metrics,
    pair_accuracy,
    retrieval_metrics,
    stable_rank,
    zeroshot_classifier,
)
from .probes import finetune_classifier, linear_probe, text_linear_probe
from .tasks import mmvp_diagnostic, retrieval, zeroshot_classification

__all__ = [
    "classification_metrics",
    "embed_images",
    "embed_texts",
    "finetune_classifier",
    "linear_probe",
    "mmvp_diagnostic",
    "model_context_length",
    "pair_accuracy",
    "retrieval",
    "retrieval_metrics",
    "stable_rank",
    "text_linear_probe",
    "write_json",
    "zeroshot_classification",
    "zeroshot_classifier",
]
