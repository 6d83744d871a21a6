"""Token statistics of the scenes caption styles (full, alt, dense), printed as a markdown table.

Words are whitespace-separated; tokens are the clipforge (OpenAI CLIP BPE) tokenizer's ids of the
whole caption, untruncated, counting <|startoftext|> and <|endoftext|>, so "> 32" is the share a
32-token text tower (the demo ancestry) truncates and "> 77" the share OpenAI CLIPs truncate.

Usage: python scripts/caption_stats.py [--n 5000] [--seed 0] [--split train] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from clipforge.data.scenes import CAPTION_STYLES, ScenesDataset
from clipforge.models.tokenizer import get_tokenizer

CONTEXTS = (32, 77)


def style_stats(style: str, n: int, seed: int = 0, split: str = "train") -> dict[str, Any]:
    """Word and token statistics of the first caption of `n` scenes in `style`."""
    ds = ScenesDataset(split, size=n, seed=seed, caption_style=style)
    texts = [ds.captions_at(i)[0] for i in range(n)]
    words = [len(t.split()) for t in texts]
    tokens = [len(ids) for ids in get_tokenizer()(texts, truncation=False, verbose=False)["input_ids"]]
    out: dict[str, Any] = {"style": style, "n": n, "example": texts[0]}
    for name, xs in (("words", words), ("tokens", tokens)):
        out[name] = {"mean": statistics.fmean(xs), "median": statistics.median(xs), "max": max(xs)}
    for c in CONTEXTS:
        out[f"over_{c}"] = sum(t > c for t in tokens) / n
    return out


def dense_coverage(n: int, seed: int = 0, split: str = "train") -> dict[int, dict[str, float]]:
    """What a truncated dense caption still says, per context: the share of scenes whose every object
    group ("red stars") is still named, and of relation scenes whose relation sentence survives."""

    ds, tok = ScenesDataset(split, size=n, seed=seed, caption_style="dense"), get_tokenizer()
    specs = [ds.spec_at(i) for i in range(n)]
    texts = [ds.captions_at(i, spec)[0] for i, spec in enumerate(specs)]
    ids = tok(texts, truncation=False, verbose=False)["input_ids"]
    out = {}
    for c in CONTEXTS:
        named = related = n_rel = 0
        for spec, x in zip(specs, ids):
            kept = tok.decode(x[1:c - 1], skip_special_tokens=True)  # what the tokenizer's truncation keeps
            nouns = [f"{o.colour} {o.shape}" for o in spec.objects]
            named += all(w in kept for w in nouns)
            if spec.relation is not None:
                n_rel += 1
                i, j, _ = spec.relation
                tail = kept.split(".")[1:]  # the relation is the sentence right after the list
                related += bool(tail) and all(w in tail[0] for w in (nouns[i], nouns[j]))
        out[c] = {"all_objects_named": named / n, "relation_stated": related / max(n_rel, 1)}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The statistics as a markdown table, plus one example caption per style."""
    head = ("| style | words mean | words median | words max | tokens mean | tokens median | tokens max | "
            + " | ".join(f"> {c} tokens" for c in CONTEXTS) + " |")
    lines = [head, "|" + "---|" * (7 + len(CONTEXTS))]
    for r in rows:
        w, t = r["words"], r["tokens"]
        lines.append(f"| {r['style']} | {w['mean']:.1f} | {w['median']:g} | {w['max']} | {t['mean']:.1f} | "
                     f"{t['median']:g} | {t['max']} | "
                     + " | ".join(f"{100 * r[f'over_{c}']:.1f} %" for c in CONTEXTS) + " |")
    lines.append("")
    lines += [f"* `{r['style']}` example: \"{r['example']}\"" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="scenes per style (default 5000)")
    ap.add_argument("--seed", type=int, default=0, help="scenes generator seed (default 0)")
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    if args.n < 1:
        print("caption_stats: --n must be at least 1", file=sys.stderr)
        return 2
    rows = [style_stats(s, args.n, args.seed, args.split) for s in CAPTION_STYLES]
    alt, dense = (next(r for r in rows if r["style"] == s) for s in ("alt", "dense"))
    text = (f"Caption styles on {args.n:,} `scenes` ({args.split} split, seed {args.seed}); first caption of each "
            f"scene; tokens counted untruncated with <|startoftext|> and <|endoftext|>.\n\n{table(rows)}\n\n"
            f"dense / alt mean tokens: {dense['tokens']['mean'] / alt['tokens']['mean']:.1f}x; "
            f"mean words: {dense['words']['mean'] / alt['words']['mean']:.1f}x\n")
    cov = dense_coverage(args.n, args.seed, args.split)
    text += "".join(f"dense cut to {c} tokens: every object group still named in "
                    f"{100 * v['all_objects_named']:.1f} % of scenes, the relation still stated in "
                    f"{100 * v['relation_stated']:.1f} % of relation scenes\n" for c, v in cov.items())
    print(text, end="")
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)  # never a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main())
