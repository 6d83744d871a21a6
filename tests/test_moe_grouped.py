"""The CLIP-MoE layer's grouped dispatch: the reference loop's outputs and gradients, fixed shapes, no host sync,
one graph under `torch.compile(fullgraph=True)`."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig

from clipforge.models.clip_moe.moe_layer import DISPATCH_MODES, MoEFFN, grouped_mm, set_dispatch


def _layer(seed: int = 0) -> MoEFFN:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, hidden_act="quick_gelu", num_attention_heads=2)
    return MoEFFN(cfg, num_experts=4, top_k=2)


def _run(layer: MoEFFN, mode: str, x: torch.Tensor, mask: torch.Tensor | None):
    layer.dispatch = mode
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out, logits = layer(x, mask)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return out.detach(), logits.detach(), x.grad, grads


@pytest.mark.parametrize("masked", [False, True])
def test_grouped_dispatch_equals_the_reference_loop_with_gradients(masked):
    layer = _layer()
    x = torch.randn(3, 7, 32)
    mask = (torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.3) if masked else None
    ref, got = _run(layer, "sparse", x, mask), _run(layer, "grouped", x, mask)
    assert torch.allclose(got[0], ref[0], atol=1e-6) and torch.equal(got[1], ref[1])
    assert torch.allclose(got[2], ref[2], atol=1e-6)
    for name, g in ref[3].items():  # experts no token chose have no gradient in the loop, zero here
        assert torch.allclose(got[3][name], g, atol=1e-5), name
    for name, g in got[3].items():
        if name not in ref[3]:
            assert not g.abs().any(), name


def test_grouped_mm_op_and_its_gradient_match_per_group_matmuls():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 8, generator=g, requires_grad=True)
    b = torch.randn(3, 8, 16, generator=g, requires_grad=True)
    offsets = torch.tensor([3, 3, 10], dtype=torch.int32)  # an empty group in the middle
    out = grouped_mm(a, b, offsets)
    ref = torch.cat([a[:3] @ b[0], a[3:3] @ b[1], a[3:] @ b[2]])
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()  # a stride-0 gradient, which the CPU kernel alone rejects
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    ref.sum().backward()
    assert torch.allclose(ga, a.grad, atol=1e-6) and torch.allclose(gb, b.grad, atol=1e-6)


def test_grouped_dispatch_compiles_as_one_graph():
    layer = _layer().train()
    layer.experts[0].dropout.p = 0.0
    set_dispatch(layer, "grouped")
    x = torch.randn(2, 5, 32, requires_grad=True)
    eager, _ = layer(x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # raises on any graph break
    out, _ = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, atol=1e-6) and x.grad is not None
    assert "grouped" in DISPATCH_MODES
    with pytest.raises(ValueError):
        set_dispatch(layer, "nope")


def test_the_shipped_copy_of_the_layer_loads_beside_clipforge(tmp_path):
    """A saved CLIP-MoE ships this file; loading that copy in a process that has clipforge must not register the
    grouped op a second time (transformers imports it under its own module name)."""
    import importlib.util

    from clipforge.models.clip_moe.remote import SHIPPED, shipped_source

    src = next(p for p, (name, _) in SHIPPED.items() if name == "moe_layer.py")
    path = tmp_path / "moe_layer.py"
    path.write_text(shipped_source(src))
    spec = importlib.util.spec_from_file_location("shipped_moe_layer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b = torch.randn(6, 8), torch.randn(2, 8, 16)
    offsets = torch.tensor([2, 6], dtype=torch.int32)
    assert torch.equal(module.grouped_mm(a, b, offsets), grouped_mm(a, b, offsets))
