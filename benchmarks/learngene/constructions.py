"""Which construction shares the multimodal block across towers of different widths: select or project.

    python -m benchmarks.learngene.constructions [--ancestry DIR] [--steps 300] [--quick]

On the demo ancestry (towers 128 and 96 wide), one MM-LG learngene per construction is extracted by the
demo's recipe (mode mmlg, linear schedule, least-squares init, Aux-Net depth 4 trained at depths 2 / 4 / 6,
KD plus the feature term, 150 steps of 64; the same seed and data for both) by `learngene.extract`
with the Aux-Net measured at step 0, along the way and at the end (held-out scenes retrieval R@1 both
ways, Fashion-MNIST zero-shot), and descendants at the ancestry's widths and at two thirds of them are
measured straight from each extracted learngene. Writes constructions.json and constructions.md
(docs/methods.md B.3b quotes them); the default construction is the one whose Aux-Net ends higher on
mean retrieval R@1. Each extraction is a resumable run under the work directory.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from .. import harness

CONSTRUCTIONS = ("select", "project")
KEYS = ("mean_retrieval_recall@1", "zeroshot_acc1")


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.learngene.constructions [flags]`: writes constructions.json / .md; 0 on success."""
    p = harness.parser("learngene", __doc__, "constructions")
    harness.add_common(p, "learngene")
    p.add_argument("--steps", type=int, default=150, help="extraction steps per construction (default 150, the "
                                                          "demo's)")
    p.add_argument("--stages", type=int, default=1, help="learngene stages (default 1, the demo's)")
    p.add_argument("--scenes", type=int, default=500, help="held-out test scenes (default 500)")
    p.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST test images (default 1000)")
    args = p.parse_args(argv)
    harness.set_threads(args.threads)

    from clipforge.files import read_json_object, write_json, write_text
    from clipforge.learngene import Learngene, Quality, descend
    from clipforge.learngene.distill import Distill
    from clipforge.learngene.extract import ExtractConfig, extract
    from clipforge.learngene.pipeline import load_ancestry
    from clipforge.schedule import LEARNGENE_SCHEDULE

    t0 = time.perf_counter()
    steps, scenes, fashion = (4, 32, 32) if args.quick else (args.steps, args.scenes, args.fashion)
    anc_dir = harness.resolve_ancestry(args.ancestry, quick=args.quick)
    ancestry, anc_path = load_ancestry(anc_dir)
    quality = Quality.builtin(ancestry.config.vision_config.image_size, scenes=scenes, fashion=fashion)
    work = harness.work_dir(args, "learngene") / "constructions"
    v, t = ancestry.config.vision_config, ancestry.config.text_config
    narrow = {"vision": _two_thirds(v), "text": _two_thirds(t)}
    max_depth = min(v.num_hidden_layers, t.num_hidden_layers)
    depth = min(4, max_depth)
    rows = []
    for construction in CONSTRUCTIONS:
        cfg = ExtractConfig(construction=construction, stages=args.stages, aux_depth_vision=depth,
                            aux_depth_text=depth, distill=Distill(alpha=1.0, beta=1.0),
                            sample_depths=sorted({d for d in (2, 4, 6) if d <= max_depth}) or None,
                            schedule=replace(LEARNGENE_SCHEDULE, steps=steps, batch_size=16 if args.quick else 64))
        lg_dir = extract(anc_dir, ["scenes", "fashion-mnist"], work / construction, cfg, quality=quality,
                         eval_every=max(1, steps // 3), force=args.overwrite, progress=not args.quick)
        meta = read_json_object(lg_dir / "learngene.json", "a learngene record")
        prov = meta["provenance"]
        lg = Learngene.load(lg_dir)
        descendants = {
            f"ancestry widths, depth {depth}": quality(descend(lg, depth, depth)),
            f"{narrow['vision']} / {narrow['text']} wide, depth {depth}": quality(
                descend(lg, depth, depth, "clip", narrow["vision"], narrow["text"]))}
        rows.append({"construction": construction, "parameters": meta["num_parameters"],
                     "breakdown": lg.parameter_breakdown(), "init_fit": prov.get("init_fit"),
                     "auxnet": prov["auxnet_quality"], "descendants_after": descendants,
                     "wall_time_s": prov["wall_time_s"]})
        print(f"[constructions] {construction}: Aux-Net step 0 {_brief(prov['auxnet_quality']['step0'])}, "
              f"final {_brief(prov['auxnet_quality']['final'])}", flush=True)
    best = max(rows, key=lambda r: r["auxnet"]["final"][KEYS[0]])
    result = {"command": harness.command("learngene", sys.argv[1:] if argv is None else argv, "constructions"),
              "date": time.strftime("%Y-%m-%d %H:%M"), "ancestry": harness.ancestry_record(anc_path),
              "ancestry_shape": {"vision": [v.num_hidden_layers, v.hidden_size], "text": [t.num_hidden_layers,
                                                                                         t.hidden_size]},
              "data": quality.describe(), "steps": steps, "stages": args.stages, "rows": rows,
              "chosen": best["construction"],
              "rule": "the construction whose Aux-Net ends with the higher held-out mean retrieval R@1",
              "machine": harness.machine(args.note), "wall_time_s": round(time.perf_counter() - t0, 1)}
    out = harness.out_dir(args, "learngene") / "constructions"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "constructions.json", result)
    write_text(out / "constructions.md", markdown(result))
    print(f"[constructions] chosen: {best['construction']}; wrote {out / 'constructions.md'} "
          f"({result['wall_time_s']:.0f} s)")
    return 0


def _two_thirds(c: Any) -> int:
    """Two thirds of a tower's width, rounded down to whole heads (head size kept)."""
    head = c.hidden_size // c.num_attention_heads
    return max(head, (2 * c.hidden_size // 3) // head * head)


def _brief(q: dict[str, float]) -> str:
    return " / ".join(f"{100 * q[k]:.1f}" for k in KEYS)


def markdown(result: dict[str, Any]) -> str:
    """constructions.md: Aux-Net quality at step 0 and after extraction, and descendants, per construction."""
    data, rows = result["data"], result["rows"]
    lines = ["# Sharing the multimodal block across towers of different widths: select vs project", "",
             f"Made by `{result['command']}` on {result['date']} in {result['wall_time_s']:.0f} s "
             f"({harness.machine_line(result['machine'])}). Ancestry: {result['ancestry'].get('name', '')}, "
             f"depth × width vision {'×'.join(map(str, result['ancestry_shape']['vision']))}, text "
             f"{'×'.join(map(str, result['ancestry_shape']['text']))}. The demo's extraction recipe: mode mmlg, "
             f"linear schedule, least-squares init, {result['stages']} stage(s), Aux-Net depth 4 trained at depths "
             f"2 / 4 / 6, KD + feature term, {result['steps']} steps each (same seed and data). Cells: held-out "
             "mean retrieval R@1 / "
             f"Fashion-MNIST zero-shot top-1, in % ({data['retrieval_size']} scenes, {data['zeroshot_size']} "
             "images).", ""]
    anc = rows[0]["auxnet"]["ancestry"]
    table_rows = []
    for r in rows:
        fit = (r["init_fit"] or {}).get("relative_residual") or {}
        table_rows.append([r["construction"], f"{r['parameters']:,}",
                           " / ".join(f"{fit[k]:.3f}" for k in ("vision", "text")) if fit else "—",
                           _brief(r["auxnet"]["step0"]), _brief(r["auxnet"]["final"])]
                          + [_brief(q) for q in r["descendants_after"].values()])
    names = list(rows[0]["descendants_after"])
    lines += harness.table(["construction", "stored parameters", "fit residual (vision / text)", "Aux-Net step 0",
                            "Aux-Net after"] + [f"descendant: {n}" for n in names], table_rows)
    lines += ["", f"Ancestry on the same data: {_brief(anc)}.", "",
              f"**Default chosen: `{result['chosen']}`** ({result['rule']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
