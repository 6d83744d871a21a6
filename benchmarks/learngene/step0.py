"""What a learngene's initialisation is worth before any training: descendants straight from a fresh learngene.

    python -m benchmarks.learngene.step0 [--ancestry DIR] [--out benchmarks/learngene/results/step0]

For every mode (mmlg, tleg_per_tower, shared_only) and init (lstsq, mean, random), a learngene is
initialised from the demo ancestry (Aux-Net depth 4, one stage, linear schedule), descendants of depths
2, 4, 6 and the ancestry's are made by `descend`, and each is measured with `Quality.builtin` (held-out
test scenes retrieval R@1 both ways, Fashion-MNIST zero-shot). Writes step0.json and step0.md
(docs/methods.md B.3b quotes them).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .. import harness


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.learngene.step0 [flags]`: writes step0.json and step0.md; 0 on success."""
    p = harness.parser("learngene", __doc__, "step0")
    p.add_argument("--ancestry", type=Path, help="ancestry model or run directory (default: the cached demo ancestry)")
    p.add_argument("--out", type=Path, default=harness.results_dir("learngene") / "step0")
    p.add_argument("--scenes", type=int, default=300, help="held-out test scenes (default 300)")
    p.add_argument("--fashion", type=int, default=500, help="Fashion-MNIST test images (default 500)")
    p.add_argument("--stages", type=int, default=1, help="learngene stages (default 1)")
    args = p.parse_args(argv)

    from clipforge.errors import ClipforgeError
    from clipforge.files import write_json, write_text
    from clipforge.learngene import Learngene, LearngeneConfig, Quality, descend
    from clipforge.learngene.pipeline import load_ancestry
    from clipforge.models.io import read_provenance

    t0 = time.perf_counter()
    ancestry, anc_path = load_ancestry(harness.resolve_ancestry(args.ancestry, quick=False))
    depth = ancestry.config.vision_config.num_hidden_layers
    depth = min(depth, ancestry.config.text_config.num_hidden_layers)
    depths = sorted({d for d in (2, 4, 6) if d <= depth} | {depth})
    quality = Quality.builtin(ancestry.config.vision_config.image_size, scenes=args.scenes, fashion=args.fashion)
    rows = []
    anc_q = quality(ancestry)
    for mode in ("mmlg", "tleg_per_tower", "shared_only"):
        for init in ("lstsq", "mean", "random"):
            cfg = LearngeneConfig.from_ancestry(ancestry.config, mode=mode, init=init, num_stages=args.stages,
                                                aux_depth_vision=4, aux_depth_text=4)
            try:
                lg = Learngene(cfg, ancestry=ancestry)
            except ClipforgeError as e:  # "mean" has no meaning across towers of different widths
                rows.append({"mode": mode, "init": init, "fit": None, "descendants": None, "refused": str(e)})
                print(f"[step0] {mode} {init}: refused ({e})", flush=True)
                continue
            res = {str(d): quality(descend(lg, d, d)) for d in depths}
            rows.append({"mode": mode, "init": init, "fit": lg.fit_record, "descendants": res})
            print(f"[step0] {mode} {init}: " + ", ".join(
                f"d{d} {100 * r['mean_retrieval_recall@1']:.1f}/{100 * r['zeroshot_acc1']:.1f}"
                for d, r in res.items()), flush=True)
    command = "python -m benchmarks.learngene.step0" + "".join(
        f" --{k} {v}" for k, v in (("ancestry", args.ancestry), ("stages", args.stages if args.stages != 1 else None))
        if v is not None)
    result = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "data": quality.describe(),
              "ancestry_recipe": read_provenance(anc_path).get("recipe"), "ancestry": anc_q, "stages": args.stages,
              "depths": depths, "rows": rows, "wall_time_s": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "step0.json", result)
    write_text(args.out / "step0.md", markdown(result, quality.describe()))
    print(f"[step0] wrote {args.out / 'step0.md'} ({result['wall_time_s']:.0f} s)")
    return 0


def markdown(result: dict[str, Any], data: dict[str, Any]) -> str:
    """step0.md: one row per mode and init, one column per descendant depth."""
    anc_q, depths = result["ancestry"], result["depths"]
    rows = []
    for r in result["rows"]:
        if r.get("descendants") is None:
            rows.append([r["mode"], r["init"], "refused"] + ["—"] * len(depths))
            continue
        fit = r["fit"]["relative_residual"] if r["fit"] else None
        rows.append([r["mode"], r["init"], f"{fit['vision']:.3f} / {fit['text']:.3f}" if fit else "—"]
                    + [f"{100 * q['mean_retrieval_recall@1']:.1f} / {100 * q['zeroshot_acc1']:.1f}"
                       for q in r["descendants"].values()])
    lines = ["# Descendants of a fresh learngene (no training)", "",
             f"Made by `{result['command']}` on {result['date']} in {result['wall_time_s']:.0f} s. Cells: held-out "
             f"mean retrieval R@1 / Fashion-MNIST zero-shot top-1, in % ({data['retrieval_size']} scenes, "
             f"{data['zeroshot_size']} images). Ancestry on the same data: "
             f"{100 * anc_q['mean_retrieval_recall@1']:.1f} / {100 * anc_q['zeroshot_acc1']:.1f}.", ""]
    lines += harness.table(["mode", "init", "fit residual (vision / text)"] + [f"depth {d}" for d in depths], rows)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
