"""OpenAI CLIP's BPE tokenizer, shipped with the package (`tokenizer_files/`, MIT licensed).

`tokenize()` gives the ids OpenAI CLIP and open_clip feed their text towers: ``<|startoftext|>``,
the BPE tokens, ``<|endoftext|>``, then zeros up to the context length. Text that does not fit is
cut so the last position still holds ``<|endoftext|>``: the text tower pools at that token.
Nothing is downloaded; the files load with `local_files_only`.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTokenizer, PreTrainedTokenizerBase

from ..errors import ClipforgeError, first_line
from .registry import PAD_TOKEN_ID

FILES_DIR = Path(__file__).resolve().parent / "tokenizer_files"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# The vocabulary's licence travels with every copy of it, under a name that cannot clash with a
# model's own LICENSE.
LICENSE_NAME = "LICENSE.tokenizer"
# Where `io.load` keeps a directory's own tokenizer on the model (absent: the packaged one).
TOKENIZER_ATTR = "clipforge_tokenizer"


@lru_cache(maxsize=1)
def get_tokenizer() -> CLIPTokenizer:
    """The packaged CLIP tokenizer (one shared instance: do not change its settings)."""
    missing = [n for n in TOKENIZER_FILES if not (FILES_DIR / n).is_file()]
    if missing:
        raise ClipforgeError(f"tokenizer file {FILES_DIR / missing[0]} is missing; reinstall clipforge")
    return CLIPTokenizer.from_pretrained(str(FILES_DIR), local_files_only=True)


def tokenize(texts: str | list[str], context_length: int = 77,
             tokenizer: PreTrainedTokenizerBase | None = None) -> torch.LongTensor:
    """Token ids [N, context_length]: bos, tokens, eos, padding (eos kept when truncating).

    `tokenizer` defaults to the packaged CLIP tokenizer (`tokenizer_for(model)` gives a model's own).
    CLIP BPE tokenizers pad with id 0, as OpenAI and open_clip do; others keep their own padding.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ClipforgeError(f"context_length must be at least 2 (bos + eos), got {context_length}")
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    tok = tokenizer if tokenizer is not None else get_tokenizer()
    # One batched call into the Rust tokenizer; truncation there drops text tokens, never the eos.
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=context_length,
              return_tensors="pt", return_attention_mask=True)
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        return enc["input_ids"]
    # CLIP's files pad with <|endoftext|> (see scripts/make_tokenizer_files.py); OpenAI pads with 0.
    return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, PAD_TOKEN_ID)


def tokenizer_for(model: Any) -> PreTrainedTokenizerBase:
    """The tokenizer a model was loaded with: its directory's own when that differs from the packaged one."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, TOKENIZER_ATTR, None) or get_tokenizer()


@lru_cache(maxsize=8)
def _packaged_signature() -> tuple[str, str]:
    return ((FILES_DIR / "vocab.json").read_text(encoding="utf-8"),
            (FILES_DIR / "merges.txt").read_text(encoding="utf-8"))


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer in a model directory, or None when it has none or it is the packaged CLIP BPE.

    A hub directory brings `tokenizer.json` and/or `vocab.json` + `merges.txt`; the OpenAI CLIPs' are
    the packaged vocabulary, so for them nothing changes. Any other tokenizer is loaded and used.
    """
    d = Path(model_dir)
    has_slow = (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
    if not has_slow and not (d / "tokenizer.json").is_file():
        return None
    if has_slow:
        try:
            same = ((d / "vocab.json").read_text(encoding="utf-8"), (d / "merges.txt").read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ClipforgeError(f"{d}: tokenizer files are not UTF-8 ({e.reason})") from None
        if same == _packaged_signature():
            return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise ClipforgeError(f"{d}: cannot load its tokenizer ({first_line(e)})") from None


def save_tokenizer(out_dir: str | Path, context_length: int = 77, *, processor: bool = False,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Write the tokenizer into `out_dir`, so `CLIPTokenizer.from_pretrained(out_dir)` works there.

    `model_max_length` is the model's text context (so `padding="max_length"` fits the model);
    `processor=True` records `CLIPProcessor` as the directory's processor class (a full CLIP).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    else:
        for name in TOKENIZER_FILES:
            shutil.copyfile(FILES_DIR / name, out / name)
        shutil.copyfile(FILES_DIR / "LICENSE", out / LICENSE_NAME)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg["model_max_length"] = int(context_length)
    if processor:
        cfg["processor_class"] = "CLIPProcessor"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
