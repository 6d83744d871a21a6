"""One-off: convert OpenAI CLIP's BPE vocabulary into `transformers.CLIPTokenizer` files.

Reads `bpe_simple_vocab_16e6.txt.gz` (from the open_clip wheel, or the file itself) and writes
`vocab.json`, `merges.txt`, `tokenizer_config.json` and `special_tokens_map.json` into
`src/clipforge/models/tokenizer_files/`, next to the MIT licence of the vocabulary. Token ids equal
OpenAI's `simple_tokenizer` (bos 49406, eos 49407); padding with zeros is left to `tokenize()`.

Usage: python scripts/make_tokenizer_files.py [path/to/open_clip_torch-*.whl | path/to/bpe...txt.gz]
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

DEFAULT_SOURCE = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")
BPE_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "clipforge" / "models" / "tokenizer_files"
# OpenAI's simple_tokenizer keeps this many merges: 49152 tokens minus 256 bytes minus 2 specials.
N_MERGES = 49152 - 256 - 2
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
VOCAB_SIZE = 49408

LICENSE_TEXT = """\
The BPE vocabulary and merges in this directory are OpenAI's CLIP tokenizer data
(bpe_simple_vocab_16e6.txt.gz), converted to Hugging Face CLIPTokenizer format.
The file was taken from the open_clip_torch 3.3.0 wheel. Both projects are MIT licensed.

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def byte_symbols() -> list[str]:
    """The printable stand-in character for each byte 0..255, in OpenAI's vocabulary order.

    Printable Latin-1 bytes stand for themselves (listed first); the rest are mapped, in byte order,
    to code points from 256 upwards so every byte has a visible, non-whitespace symbol.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(kept)
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in kept] + [chr(256 + i) for i in range(len(extra))]


def read_bpe_lines(source: Path) -> list[str]:
    """Lines of the gzipped BPE file, read from a wheel or from the .gz file itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as zf:
            data = zf.read(BPE_NAME)
    else:
        data = source.read_bytes()
    return gzip.decompress(data).decode("utf-8").split("\n")


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id exactly as OpenAI's simple_tokenizer orders them (49,408 entries)."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIALS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"expected {VOCAB_SIZE} distinct tokens, got {len(vocab)}")
    return vocab


def write_files(vocab: dict[str, int], merges: list[tuple[str, str]], out_dir: Path) -> list[Path]:
    """Write the four tokenizer files (and the licence) into `out_dir`; returns the paths written."""
    # The pad token is <|endoftext|>, not "!" (id 0): a declared special token is cut out of the text
    # before BPE, so pad "!" would turn "wow!!" into [..., 0, 0] instead of OpenAI's [..., 748].
    # clipforge.models.tokenizer pads with zeros itself; a model pools at the first eos, so the pad
    # value never reaches the pooled output either way.
    tok = CLIPTokenizer(vocab=vocab, merges=merges, bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                        unk_token=SPECIALS[1], pad_token=SPECIALS[1], model_max_length=77)
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5 saves a tokenizer.json (3.6 MB) and the config; vocab.json + merges.txt hold the
    # same data in a third of the size, load as fast, and are what transformers 4 also reads.
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
    paths = {name: out_dir / name for name in
             ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "LICENSE")}
    paths["vocab.json"].write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    paths["merges.txt"].write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                   encoding="utf-8")
    paths["tokenizer_config.json"].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    paths["special_tokens_map.json"].write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    paths["LICENSE"].write_text(LICENSE_TEXT, encoding="utf-8")
    return list(paths.values())


def check(out_dir: Path) -> None:
    """Reload the written files and compare with a known encoding from OpenAI's tokenizer."""
    tok = CLIPTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    ids = tok("a photo of a cat")["input_ids"]
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    bangs = tok("wow!!", add_special_tokens=False)["input_ids"]
    if ids != expected or len(tok) != VOCAB_SIZE or bangs != [2781, 748]:
        raise SystemExit(f"round-trip check failed: {ids}, {bangs}, {len(tok)} tokens")


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    lines = read_bpe_lines(source)
    # Line 0 is a "#version" header; OpenAI keeps merges from line 1 on.
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    written = write_files(build_vocab(merges), merges, OUT_DIR)
    check(OUT_DIR)
    print("wrote", *written, sep="\n  ")


if __name__ == "__main__":
    main(sys.argv[1:])
