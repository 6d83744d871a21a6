"""Two gloo ranks, one MoE expert idle on one rank: the step completes and its gradients are exact."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import fake_batch
from torch import nn

from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel
from clipforge.models.registry import make_config
from clipforge.moe.balance import RouterStep
from clipforge.train import ClipLoss

WORLD = 2
BATCH = 4  # 2 per rank
IDLE_EVERYWHERE, IDLE_SOMEWHERE = 2, 3  # experts of the forced vision block


def _config() -> CLIPMoEConfig:
    return CLIPMoEConfig.from_dense(make_config("tiny"), num_experts=4, top_k=2, moe_layers_vision=[1],
                                    moe_layers_text=[1], expert_dropout=0.0)


def _full_batch() -> dict[str, torch.Tensor]:
    pixels, ids = fake_batch(BATCH, seed=11)
    return {"pixel_values": pixels, "input_ids": ids}


def _rank_batch(rank: int) -> dict[str, torch.Tensor]:
    return {k: v.chunk(WORLD)[rank] for k, v in _full_batch().items()}


class _Step(nn.Module):
    """The step as a module, so DDP's forward sees every parameter it uses (as `train()` does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # alpha 0: each rank's balance loss sees only its tokens, so only InfoNCE is rank-exact.
        self.step = RouterStep(ClipLoss(local_loss=True, gather_with_grad=True), alpha=0.0)

    def forward(self, batch):
        return self.step(self.model, batch)[0]


def _vision_counts(model: CLIPMoEModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many top-2 assignments each expert of vision block 1 gets on `batch`."""
    with torch.no_grad():
        logits = model.get_image_features(batch["pixel_values"], output_router_logits=True).router_logits[0]
    return torch.bincount(logits.topk(2, dim=-1).indices.reshape(-1), minlength=4)


def _forced_model() -> CLIPMoEModel:
    """A model whose vision MoE block never uses expert 2 and uses expert 3 on one rank's tokens only.

    The block's second layer norm is set to output exactly 1 in channel 0, so router row e gets a
    constant offset from it: experts 0 and 1 lead with logits 2 and 1, expert 2 trails at 0, and
    expert 3 scores 10·(u·h − θ) + 1, beating expert 1 only where a token's u·h exceeds θ, a
    threshold placed between the two ranks' highest scores.
    """
    torch.manual_seed(0)
    model = CLIPMoEModel(_config()).train()
    block = model.vision_model.encoder.layers[1]
    with torch.no_grad():
        block.layer_norm2.weight[0] = 0.0
        block.layer_norm2.bias[0] = 1.0
        captured = {}
        hook = block.mlp.register_forward_pre_hook(lambda _m, args: captured.update(h=args[0].detach()))
        model.get_image_features(_full_batch()["pixel_values"])
        hook.remove()
        h = captured["h"][..., 1:]  # [B, T, d-1]
        u = torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(1))
        top = (h @ u).reshape(WORLD, -1).amax(dim=1)  # each rank's highest score
        theta = top.mean()
        assert (top[0] - top[1]).abs() > 0.1  # a clear margin, so batch size cannot flip a choice
        w = torch.zeros_like(block.mlp.router.weight)
        w[0, 0], w[1, 0], w[2, 0] = 2.0, 1.0, 0.0
        w[3, 0], w[3, 1:] = 1.0 - 10.0 * theta, 10.0 * u
        block.mlp.router.weight.copy_(w)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = CLIPMoEModel(_config()).train()
        model.load_state_dict(torch.load(os.path.join(out_dir, "model.pt"), weights_only=True))
        ddp = nn.parallel.DistributedDataParallel(_Step(model))  # find_unused_parameters=False
        batch = _rank_batch(rank)
        loss = ddp(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        # A second step: DDP would raise here had the first one left a parameter's reduction pending.
        model.zero_grad(set_to_none=True)
        ddp(batch).backward()
        torch.save({"loss": loss.detach(), "grads": grads, "counts": _vision_counts(model, batch)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_idle_expert_on_one_rank_gives_exact_gradients(tmp_path):
    model = _forced_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    loss = _Step(model)(_full_batch())
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    counts = torch.stack([r["counts"] for r in ranks])
    assert (counts[:, IDLE_EVERYWHERE] == 0).all()
    assert sorted((counts[:, IDLE_SOMEWHERE] > 0).tolist()) == [False, True]  # idle on exactly one rank
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss.detach(), rtol=0, atol=1e-5)

    idle = "vision_model.encoder.layers.1.mlp.experts.2."
    for name, p in model.named_parameters():
        for r in ranks:
            if p.grad is None:  # the expert no rank used: zero gradient under DDP, none in one process
                assert name.startswith(idle), name
                assert torch.all(r["grads"][name] == 0), name
            else:
                torch.testing.assert_close(r["grads"][name], p.grad, rtol=0, atol=1e-5, msg=name)
