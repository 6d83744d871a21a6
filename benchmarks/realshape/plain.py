"""Load model directories in plain transformers and embed fixed inputs; imports no clipforge.

    python benchmarks/realshape/plain.py JOBS.json

Run as a script in its own process (never imported by the benchmark, so clipforge is not in the process):
JOBS.json holds {"jobs": [{"dir", "kind", "inputs", "output"}, ...]}; kind is clip, vision, text or moe.
Each directory is loaded the way a user without clipforge would: `CLIPModel`,
`CLIPVisionModelWithProjection`, `CLIPTextModelWithProjection` `.from_pretrained(dir)`, a CLIP-MoE by
`AutoModel.from_pretrained(dir, trust_remote_code=True)` (the code shipped in the directory). The inputs
(`pixel_values`, `input_ids` in a safetensors file) are embedded with the projection, unnormalised, and the
embeddings written to `output`. Also tried: the directory's image processor and tokenizer. The answer,
one JSON object per job plus whether clipforge was ever imported, goes to JOBS.json's "results".
"""

from __future__ import annotations

import json
import sys
import time


def _features(out):
    return out if hasattr(out, "shape") else out.pooler_output


def embed(model, kind: str, tensors: dict) -> dict:
    """Projected image and text embeddings of the towers the model has."""
    import torch

    out = {}
    with torch.no_grad():
        if kind in ("clip", "moe"):
            out["image"] = _features(model.get_image_features(pixel_values=tensors["pixel_values"]))
            out["text"] = _features(model.get_text_features(input_ids=tensors["input_ids"]))
        elif kind == "vision":
            out["image"] = model(pixel_values=tensors["pixel_values"]).image_embeds
        else:
            out["text"] = model(input_ids=tensors["input_ids"]).text_embeds
    return {k: v.float().contiguous() for k, v in out.items()}


def one(job: dict) -> dict:
    import transformers
    from safetensors.torch import load_file, save_file

    classes = {"clip": transformers.CLIPModel, "vision": transformers.CLIPVisionModelWithProjection,
               "text": transformers.CLIPTextModelWithProjection}
    t0 = time.perf_counter()
    if job["kind"] == "moe":
        model = transformers.AutoModel.from_pretrained(job["dir"], trust_remote_code=True)
    else:
        model = classes[job["kind"]].from_pretrained(job["dir"])
    model.eval()
    load_s = time.perf_counter() - t0
    result = {"dir": job["dir"], "kind": job["kind"], "class": type(model).__name__,
              "module": type(model).__module__, "load_s": round(load_s, 2),
              "params": sum(p.numel() for p in model.parameters())}
    save_file(embed(model, job["kind"], load_file(job["inputs"])), job["output"])
    for what, loader in (("image_processor", transformers.AutoImageProcessor),
                         ("tokenizer", transformers.AutoTokenizer)):
        needed = job["kind"] in ("clip", "moe") or (job["kind"] == "vision") == (what == "image_processor")
        if not needed:
            continue
        try:
            result[what] = type(loader.from_pretrained(job["dir"])).__name__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal: the embeddings are the check
            result[what] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return result


def main(path: str) -> int:
    with open(path) as fh:
        spec = json.load(fh)
    results = [one(job) for job in spec["jobs"]]
    import transformers

    spec["results"] = results
    spec["clipforge_imported"] = any(m == "clipforge" or m.startswith("clipforge.") for m in sys.modules)
    spec["transformers"] = transformers.__version__
    with open(path, "w") as fh:
        json.dump(spec, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
