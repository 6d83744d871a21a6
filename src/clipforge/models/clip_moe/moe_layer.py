"""The sparse mixture-of-experts FFN that replaces a CLIP block's MLP.

Routing is Mixtral's: router `Linear(d, E, bias=False)`, softmax in fp32, top-k, the k probabilities
renormalised to sum to 1, output Σ g_e · Expert_e(h). The dispatch sorts the (token, slot)
assignments by expert once and runs every used expert on one contiguous slice of tokens, so an
expert no token chose does no work at all, and the router runs once per forward.

That dispatch sizes its slices from the routing, read on the host once per layer per forward (a
device sync, and a graph break under `torch.compile`). `dispatch="grouped"` keeps every shape fixed
and never syncs: the N·k (token, slot) rows sorted by expert go through one grouped matrix product per
linear layer (`torch.nn.functional.grouped_mm` with per-expert offsets computed on the device), and the
rows are put back in (token, slot) order and summed over the k slots, a deterministic reduction (no
`index_add_`, which is not deterministic on CUDA). It compiles with `fullgraph=True`.

Data-dependent shapes are also what `torch.export` and ONNX cannot trace. `dispatch="dense"` (or the
`dense_dispatch(model)` context) runs every expert on every token and weights the outputs by the top-k
gates scattered into an [N, E] matrix (zero for unchosen experts): the same sum, so equal outputs up to
float rounding, at E/k times the FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.clip.modeling_clip import CLIPMLP


class Expert(CLIPMLP):
    """One expert: CLIP's FFN (`fc1` → activation → `fc2`, same parameter names as a dense block's MLP)
    with dropout on the hidden activation, which `nn.Dropout` applies only in training mode."""

    def __init__(self, config, dropout: float = 0.0) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


Dispatch = Literal["sparse", "grouped", "dense"]
DISPATCH_MODES: tuple[str, ...] = ("sparse", "grouped", "dense")


def _grouped_mm(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    return F.grouped_mm(a.contiguous() if b.dim() == 3 else a, b.contiguous() if b.dim() == 2 else b, offs=offsets)


def _grouped_mm_fake(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offsets.shape[0], a.shape[0], b.shape[-1])


def _grouped_mm_setup(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
    a, b, offsets = ctx.saved_tensors
    grad = grad.contiguous()  # e.g. the stride-0 gradient of a sum, which the CPU kernel rejects
    return grouped_mm(grad, b.transpose(1, 2), offsets), grouped_mm(a.t(), grad, offsets), None


def _register_grouped_mm(name: str = "clipforge::grouped_mm_v1"):
    """The op, registered once per process: this file is also shipped inside saved CLIP-MoE directories, and a
    process may load it twice (clipforge and a directory's copy); the name carries a version for that reason."""
    namespace, op = name.split("::")
    existing = getattr(getattr(torch.ops, namespace), op, None)
    if existing is not None:
        return existing
    custom = torch.library.custom_op(name, _grouped_mm, mutates_args=())
    custom.register_fake(_grouped_mm_fake)
    custom.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)
    return custom


grouped_mm = _register_grouped_mm()
grouped_mm.__doc__ = """`F.grouped_mm` as an opaque op: rows of `a` grouped by `offsets` (cumulative ends).

a [N, i] @ b [G, i, o] → [N, o] (group g of rows through b[g]); a [i, N] @ b [N, o] → [G, i, o] (a sum per group
of rows: the weight gradient). Wrapped because torch's own shape rule accepts only bf16 (its CUDA kernel's
type), so an fp32 graph would not compile; its backward is made of the same op."""


class MoEFFN(nn.Module):
    """Top-k mixture of `num_experts` CLIP FFNs with a linear router.

    `forward(h [B, T, d], mask=None) -> (out [B, T, d], router_logits [B*T, E] fp32)`. `mask` [B, T]
    (True = compute) lets a caller skip tokens whose output it will never read (they get a zero FFN
    output); their router logits are still returned, and the balance losses take their own mask.
    `dispatch` ("sparse", the default, or "dense" for export; see the module docstring) is a plain
    attribute, not part of the config or the weights.
    """

    dispatch: Dispatch

    def __init__(self, config, num_experts: int, top_k: int, expert_dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, {num_experts}], got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = nn.Linear(config.hidden_size, num_experts, bias=False)
        # Keep PyTorch's default (kaiming-uniform) router init, as the paper and code do: this flag
        # stops transformers' `_init_weights` from redrawing it as normal(0, 0.02).
        self.router._is_hf_initialized = True
        self.experts = nn.ModuleList(Expert(config, expert_dropout) for _ in range(num_experts))
        self.dispatch = "sparse"

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router logits [N, E] (fp32), renormalised top-k gates [N, k] (fp32) and chosen experts [N, k]."""
        # The router runs outside autocast, in its weights' precision: routing decisions are discrete
        # and bf16 logits flip near-ties (Switch Transformer's "selective precision").
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.router(x.to(self.router.weight.dtype)).float()
        gates, chosen = logits.softmax(dim=-1).topk(self.top_k, dim=-1)
        gates = gates / gates.sum(dim=-1, keepdim=True)
        return logits, gates, chosen

    def forward(self, hidden_states: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits, gates, chosen = self.route(x)
        flat_mask = None if mask is None else mask.reshape(-1)
        if self.dispatch == "dense":
            out = self._dense_dispatch(x, gates, chosen, flat_mask)
        elif self.dispatch == "grouped" and self._aligned():
            out = self._grouped_dispatch(x, gates, chosen, flat_mask)
        elif self.dispatch in ("grouped", "sparse"):  # grouped needs 16-byte rows (every real CLIP has them)
            out = self._dispatch(x, gates, chosen, flat_mask)
        else:
            raise ValueError(f"MoEFFN.dispatch must be one of {DISPATCH_MODES}, got {self.dispatch!r}")
        return out.reshape(shape), logits

    def _dense_dispatch(self, x: Tensor, gates: Tensor, chosen: Tensor, mask: Tensor | None) -> Tensor:
        """Σ_e w[:, e] · expert_e(x) with w the top-k gates scattered into [N, E]: static shapes only."""
        weights = torch.zeros(x.shape[0], self.num_experts, dtype=gates.dtype, device=x.device)
        weights = weights.scatter(1, chosen, gates)
        if mask is not None:
            weights = weights * mask.to(weights.dtype).unsqueeze(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # Same order of operations as the sparse path (expert output · gate, cast, then summed),
            # so the two differ only by the order of the k-term sum.
            out = out + (expert(x) * weights[:, e:e + 1]).to(out.dtype)
        return out

    def _aligned(self) -> bool:
        fc1 = self.experts[0].fc1
        return fc1.in_features % 8 == 0 and fc1.out_features % 8 == 0

    def _grouped_dispatch(self, x: Tensor, gates: Tensor, chosen: Tensor, mask: Tensor | None) -> Tensor:
        """The sparse sum with fixed shapes and no host sync: one grouped product per linear layer."""
        n_tokens, k = chosen.shape
        expert_ids = chosen.reshape(-1)  # row r = token r // k, slot r % k
        weights = gates.reshape(-1)
        if mask is not None:  # masked tokens are computed (fixed shapes) but weigh nothing
            weights = weights * mask.to(weights.dtype).repeat_interleave(k)
        order = torch.argsort(expert_ids, stable=True)
        sorted_ids = expert_ids[order]
        offsets = torch.cumsum(torch.bincount(expert_ids, minlength=self.num_experts), 0).to(torch.int32)
        fc1 = [e.fc1 for e in self.experts]
        fc2 = [e.fc2 for e in self.experts]
        h = x.index_select(0, order // k)
        h = _grouped_linear(h, fc1, sorted_ids, offsets)
        first = self.experts[0]
        h = first.dropout(first.activation_fn(h))
        h = _grouped_linear(h, fc2, sorted_ids, offsets)
        y = h * weights[order].unsqueeze(-1).to(h.dtype)
        y = y.index_select(0, torch.argsort(order))  # back to (token, slot) order
        return y.reshape(n_tokens, k, -1).sum(dim=1).to(x.dtype)

    def _dispatch(self, x: Tensor, gates: Tensor, chosen: Tensor, mask: Tensor | None) -> Tensor:
        """Σ_slots gate · expert(x) per token, each expert run once on its contiguous group of tokens."""
        n_tokens, k = chosen.shape
        expert_ids = chosen.reshape(-1)
        token_ids = torch.arange(n_tokens, device=x.device).repeat_interleave(k)
        weights = gates.reshape(-1)
        if mask is not None:
            keep = mask.to(torch.bool).repeat_interleave(k)
            expert_ids, token_ids, weights = expert_ids[keep], token_ids[keep], weights[keep]
        order = torch.argsort(expert_ids, stable=True)
        token_ids, weights = token_ids[order], weights[order]
        # One device→host sync: the slice sizes. Everything else stays on the device.
        counts = torch.bincount(expert_ids, minlength=self.num_experts).tolist()
        inputs = x.index_select(0, token_ids)
        pieces, start = [], 0
        for e, n in enumerate(counts):
            if n:
                pieces.append(self.experts[e](inputs[start:start + n]))
            start += n
        out = torch.zeros_like(x)
        if pieces:
            y = torch.cat(pieces) * weights.unsqueeze(-1)
            out.index_add_(0, token_ids, y.to(out.dtype))
        return self._touch_idle_experts(out, counts)

    def _touch_idle_experts(self, out: Tensor, counts: list[int]) -> Tensor:
        """Under DDP, give every trainable parameter of an expert that got no token a zero gradient.

        DDP (without `find_unused_parameters`) waits for a gradient of every trainable parameter; an
        expert idle on one rank would stall the all-reduce. Adding 0 · Σ params keeps it in the graph
        (its gradient here is exactly 0, and the all-reduce averages in the other ranks' gradients).
        Single-process runs skip this, so there an idle expert's gradient stays None.
        """
        if not (self.training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()):
            return out
        for e, n in enumerate(counts):
            if n == 0:
                params = [p for p in self.experts[e].parameters() if p.requires_grad]
                if params:
                    out = out + torch.stack([p.sum() for p in params]).sum().to(out.dtype) * 0.0
        return out


def _grouped_linear(h: Tensor, layers: list[nn.Linear], expert_of_row: Tensor, offsets: Tensor) -> Tensor:
    """Row r through `layers[expert_of_row[r]]`, rows grouped by expert (`offsets`: cumulative ends)."""
    weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)  # [E, in, out]
    bias = torch.stack([layer.bias for layer in layers])  # [E, out]
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    out = grouped_mm(h.to(dtype), weight.to(dtype), offsets)
    return out + bias.to(out.dtype).index_select(0, expert_of_row)


def set_dispatch(model: nn.Module, mode: Dispatch) -> int:
    """Every `MoEFFN` in `model` uses dispatch `mode` from now on; returns how many layers there are."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {mode!r}")
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    for m in layers:
        m.dispatch = mode
    return len(layers)


@contextmanager
def dense_dispatch(model: nn.Module) -> Iterator[nn.Module]:
    """Context: every `MoEFFN` in `model` uses the dense (exportable) dispatch; restored after."""
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    before = [m.dispatch for m in layers]
    for m in layers:
        m.dispatch = "dense"
    try:
        yield model
    finally:
        for m, mode in zip(layers, before):
            m.dispatch = mode
