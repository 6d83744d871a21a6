"""OpenAI CLIP's BPE tokenizer, shipped with the package (`tokenizer_files/`, MIT licensed).

`tokenize()` gives the ids OpenAI CLIP and open_clip feed their text towers: ``<|startoftext|>``,
the BPE tokens, ``<|endoftext|>``, then zeros up to the context length. Text that does not fit is
cut so the last position still holds ``<|endoftext|>``: the text tower pools at that token.
Nothing is downloaded; the files load with `local_files_only`.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from ..errors import ClipforgeError
from .registry import PAD_TOKEN_ID

FILES_DIR = Path(__file__).resolve().parent / "tokenizer_files"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# The vocabulary's licence travels with every copy of it, under a name that cannot clash with a
# model's own LICENSE.
LICENSE_NAME = "LICENSE.tokenizer"


@lru_cache(maxsize=1)
def get_tokenizer() -> CLIPTokenizer:
    """The packaged CLIP tokenizer (one shared instance: do not change its settings)."""
    missing = [n for n in TOKENIZER_FILES if not (FILES_DIR / n).is_file()]
    if missing:
        raise ClipforgeError(f"tokenizer file {FILES_DIR / missing[0]} is missing; reinstall clipforge")
    return CLIPTokenizer.from_pretrained(str(FILES_DIR), local_files_only=True)


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
    """Token ids [N, context_length]: bos, tokens, eos, zero padding (eos kept when truncating)."""
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ClipforgeError(f"context_length must be at least 2 (bos + eos), got {context_length}")
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    # One batched call into the Rust tokenizer; truncation there drops text tokens, never the eos.
    enc = get_tokenizer()(list(texts), padding="max_length", truncation=True, max_length=context_length,
                          return_tensors="pt", return_attention_mask=True)
    # The files pad with <|endoftext|> (see scripts/make_tokenizer_files.py); OpenAI pads with 0.
    return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, PAD_TOKEN_ID)


def save_tokenizer(out_dir: str | Path) -> None:
    """Copy the tokenizer files into `out_dir`, so `CLIPTokenizer.from_pretrained(out_dir)` works there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(FILES_DIR / name, out / name)
    shutil.copyfile(FILES_DIR / "LICENSE", out / LICENSE_NAME)
