"""Speed of clipforge's MoE FFN layer (forward + backward) against its floor and the released loop.

    python -m benchmarks.moe_layer.run [--quick] [--out benchmarks/moe_layer/results] [--threads N] [--repeats N]

Four layers on the same tokens, E=4 experts, top-2:
  * moe            `clipforge.models.clip_moe.moe_layer.MoEFFN` (tokens sorted by expert once, one contiguous
                   slice per expert; one host sync for the slice sizes);
  * moe_grouped    the same layer and weights with `dispatch="grouped"` (fixed shapes, no host sync: one
                   grouped matrix product per linear layer; what `--compile` uses);
  * two_dense      two CLIP FFNs (`CLIPMLP`) on every token: the compute floor of top-2 routing;
  * released_loop  the Mixtral-style loop the released CLIP-MoE code uses (one-hot mask, `torch.where`
                   and a gather per expert), re-implemented below and loaded with the moe layer's weights.
Writes results.json and results.md (atomically) into --out, and prints the table. fp32 on CPU; on CUDA
the layers run under bf16 autocast (the equivalence check stays fp32).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPMLP

from clipforge.models.clip_moe.moe_layer import MoEFFN

from .. import harness
from .report import render

NAME = "moe_layer"
EXPERTS, TOP_K, TOLERANCE = 4, 2, 1e-5


class Shape(NamedTuple):
    """One benchmarked input: FFN width, activation and tokens (`_asdict()` is its row in the results)."""

    name: str
    hidden: int
    intermediate: int
    act: str
    batch: int
    seq: int


def shapes(quick: bool, cuda: bool) -> list[Shape]:
    """The benchmarked shapes: the demo ancestry's towers and ViT-B/16 (or tiny ones with `quick`)."""
    if quick:
        return [Shape("tiny-vision", 32, 128, "gelu", 16, 26), Shape("tiny-text", 32, 128, "gelu", 16, 20)]
    # ViT-B/16 at batch 8 keeps a CPU run to about a minute; a GPU gets a batch closer to training's.
    return [Shape("demo-vision", 128, 512, "gelu", 256, 26),  # 40 px, patch 8: 25 patches + CLS
            Shape("demo-text", 128, 512, "gelu", 256, 20),
            Shape("vit-b16", 768, 3072, "quick_gelu", 64 if cuda else 8, 197)]


class ReleasedLoopMoE(nn.Module):
    """The released CLIP-MoE FFN: transformers' `MixtralSparseMoeBlock` loop over experts."""

    def __init__(self, config: CLIPVisionConfig, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Linear(config.hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(CLIPMLP(config) for _ in range(num_experts))

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float)
        weights, selected = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        # mask[e, slot, token]: every expert scans the whole mask and gathers its tokens itself.
        mask = F.one_hot(selected, self.num_experts).permute(2, 1, 0)
        for e in range(self.num_experts):
            slot, token = torch.where(mask[e])
            y = self.experts[e](x[token]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out.reshape(shape), logits


class TwoDense(nn.Module):
    """Two CLIP FFNs on every token: what top-2 routing costs with no routing overhead at all."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.a, self.b = CLIPMLP(config), CLIPMLP(config)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.a(x) + self.b(x), None


def build(shape: Shape, device: torch.device) -> tuple[dict[str, nn.Module], float, list[int]]:
    """The three layers (the loop loaded with the moe layer's weights), the max |Δ| of their outputs and
    the moe layer's tokens per expert."""
    # Only the FFN fields matter; one head keeps the config's width/heads check quiet at any width.
    config = CLIPVisionConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, hidden_act=shape.act,
                              num_attention_heads=1)
    torch.manual_seed(0)
    moe = MoEFFN(config, EXPERTS, TOP_K).to(device)
    loop = ReleasedLoopMoE(config, EXPERTS, TOP_K).to(device)
    with torch.no_grad():
        loop.gate.weight.copy_(moe.router.weight)
        for mine, theirs in zip(moe.experts, loop.experts, strict=True):
            theirs.load_state_dict(mine.state_dict())
        x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device)
        diff = (moe(x)[0] - loop(x)[0]).abs().max().item()
        load = torch.bincount(moe.route(x.reshape(-1, shape.hidden))[2].reshape(-1), minlength=EXPERTS).tolist()
    if not diff <= TOLERANCE:
        raise AssertionError(f"{shape.name}: moe and released loop differ by {diff:.3g} > {TOLERANCE}")
    grouped = MoEFFN(config, EXPERTS, TOP_K).to(device)
    grouped.load_state_dict(moe.state_dict())
    grouped.dispatch = "grouped"
    with torch.no_grad():
        diff = max(diff, (grouped(x)[0] - loop(x)[0]).abs().max().item())
    if not diff <= TOLERANCE:
        raise AssertionError(f"{shape.name}: grouped moe and released loop differ by {diff:.3g} > {TOLERANCE}")
    return {"moe": moe, "moe_grouped": grouped, "two_dense": TwoDense(config).to(device),
            "released_loop": loop}, diff, load


def time_layers(layers: dict[str, nn.Module], x: Tensor, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of forward + backward of `out.sum()` (w.r.t. input and parameters) per layer."""
    cuda = x.device.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in layers}
    x = x.detach().requires_grad_(True)
    for i in range(warmup + repeats):
        # Round-robin, not one layer after another: slow drift (other load, clocks) hits all three alike.
        for name, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            sync()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = layer(x)[0]
            out.float().sum().backward()
            sync()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def describe_device(device: torch.device, note: str | None = None) -> dict[str, Any]:
    """The machine (benchmarks.harness.machine), the device and the dtype the layers run in, for results.json."""
    return {**harness.machine(note), "device": device.type,
            "dtype": "bf16 autocast" if device.type == "cuda" else "fp32"}


def measure(shape: Shape, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """One shape's row: ms per layer, their ratios, the equivalence check's max |Δ| and tokens per expert."""
    layers, diff, load = build(shape, device)
    x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device)
    ms = time_layers(layers, x, warmup, repeats)
    return {**shape._asdict(), "ms": ms, "max_abs_diff": diff, "expert_load": load,
            "ratio_vs_two_dense": ms["moe"] / ms["two_dense"],
            "ratio_vs_released_loop": ms["moe"] / ms["released_loop"],
            "ratio_grouped_vs_moe": ms["moe_grouped"] / ms["moe"]}


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.moe_layer.run [flags]`; 0 on success."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = harness.parser(NAME, __doc__)
    harness.add_common(p, NAME, work=False, ancestry=False, threads="all cores")
    p.add_argument("--repeats", type=int, help="timed repetitions per layer (default 20, quick 3)")
    p.add_argument("--warmup", type=int, help="untimed repetitions first (default 3, quick 1)")
    args = p.parse_args(argv)

    harness.set_threads(args.threads, default_all=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    results: dict[str, Any] = {"command": harness.command(NAME, argv), "device": describe_device(device, args.note),
                               "experts": EXPERTS, "top_k": TOP_K, "warmup": warmup, "repeats": repeats, "shapes": []}
    for shape in shapes(args.quick, device.type == "cuda"):
        print(f"[moe_layer] {shape.name}: {shape.batch} × {shape.seq} tokens, d={shape.hidden}, "
              f"d_ff={shape.intermediate}", flush=True)
        results["shapes"].append(measure(shape, device, warmup, repeats))
    out = harness.out_dir(args, NAME)
    harness.write_results(out, results, render)
    print((out / "results.md").read_text(), end="")
    print(f"[moe_layer] wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
