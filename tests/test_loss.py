"""ClipLoss: hand-computed values, label smoothing, the temperature clamp, and exact 2-rank equivalence."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from _train_worker import SyntheticPairs, tiny_model
from torch import nn

from clipforge.train import ClipLoss, ClipStep, clamp_logit_scale_, contrastive_logits


def _features(n: int = 6, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def _hand_ce(logits: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Row-wise cross-entropy against the diagonal, written out."""
    n = logits.shape[0]
    logp = logits - logits.exp().sum(dim=1, keepdim=True).log()
    nll = -logp[torch.arange(n), torch.arange(n)]
    uniform = -logp.mean(dim=1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_hand_computation(smoothing):
    img, txt = _features()
    log_scale = torch.tensor(math.log(20.0))
    sims = torch.zeros(6, 6)
    for i in range(6):
        for j in range(6):
            sims[i, j] = 20.0 * float((img[i] * txt[j]).sum())
    expected = (_hand_ce(sims, smoothing) + _hand_ce(sims.T, smoothing)) / 2
    got = ClipLoss(label_smoothing=smoothing)(img, txt, log_scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    per_image, per_text = contrastive_logits(img, txt, 20.0)
    torch.testing.assert_close(per_image, sims, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_text, sims.T, rtol=1e-5, atol=1e-5)


def test_logit_scale_clamped_at_use_and_in_place():
    img, txt = _features()
    loss = ClipLoss()
    too_big = torch.tensor(10.0, requires_grad=True)
    torch.testing.assert_close(loss(img, txt, too_big), loss(img, txt, torch.tensor(math.log(100.0))))
    loss(img, txt, too_big).backward()
    assert too_big.grad.item() == 0.0  # outside the range the clamp blocks the gradient
    torch.testing.assert_close(loss(img, txt, torch.tensor(-3.0)), loss(img, txt, torch.tensor(0.0)))

    model = nn.Module()
    model.logit_scale = nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    model.logit_scale.data.fill_(-1.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == 0.0


class _Pair(nn.Module):
    """The step as a module, so DDP's forward sees every parameter the step uses."""

    def __init__(self, model: nn.Module, loss: ClipLoss) -> None:
        super().__init__()
        self.model = model
        self.step = ClipStep(loss)

    def forward(self, batch):
        return self.step(self.model, batch)[0]


def _full_batch():
    ds = SyntheticPairs(8, seed=4)
    return {"pixel_values": ds.pixel_values, "input_ids": ds.input_ids}


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = {k: v.chunk(world)[rank] for k, v in _full_batch().items()}
        results = {}
        for local_loss in (True, False):
            model = tiny_model()
            ddp = nn.parallel.DistributedDataParallel(_Pair(model, ClipLoss(local_loss=local_loss)))
            loss = ddp(batch)
            loss.backward()  # DDP averages gradients over ranks
            results[local_loss] = {"loss": loss.detach(),
                                   "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)

    model = tiny_model()
    loss = _Pair(model, ClipLoss())(_full_batch())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for local_loss in (True, False):
        # local_loss: each rank's loss is the mean over its own rows, so the global loss is their mean;
        # otherwise every rank computes the full loss.
        rank_losses = torch.stack([res[local_loss]["loss"] for res in ranks])
        torch.testing.assert_close(rank_losses.mean(), loss.detach(), rtol=0, atol=1e-5)
        for res in ranks:
            assert res[local_loss]["grads"].keys() == grads.keys()
            for n, g in grads.items():
                torch.testing.assert_close(res[local_loss]["grads"][n], g, rtol=0, atol=1e-5,
                                           msg=f"{n} (local_loss={local_loss})")
