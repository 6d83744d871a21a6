"""CLIP-MoE model layer: routing, dispatch, gradients, balance losses, packing, save/load."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _train_worker import SyntheticPairs, tiny_model
from helpers import fake_batch

from clipforge.models import io
from clipforge.models.clip_moe.configuration_clip_moe import CLIPMoEConfig
from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel, MoEEncoderLayer
from clipforge.models.clip_moe.moe_layer import MoEFFN
from clipforge.models.encode import image_features, text_features
from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID, make_config
from clipforge.moe.balance import (
    RouterStep,
    balance_loss,
    expert_load,
    mixtral_balance_loss,
    switch_balance_loss,
    text_token_mask,
)
from clipforge.moe.pack import pack, upcycle
from clipforge.train import ClipLoss, TrainConfig, enable_grad_checkpointing, train

ATOL = 1e-6


def _moe(seed: int = 0, **kw) -> CLIPMoEModel:
    kw.setdefault("expert_dropout", 0.0)
    cfg = CLIPMoEConfig.from_dense(make_config("tiny"), **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPMoEModel(cfg).eval()


def _ffn(num_experts: int = 4, top_k: int = 2, seed: int = 0) -> MoEFFN:
    torch.manual_seed(seed)
    return MoEFFN(make_config("tiny").vision_config, num_experts, top_k).eval()


# ------------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_identical_experts_equal_the_dense_model(top_k):
    dense = tiny_model(seed=1)
    moe = upcycle(dense, num_experts=4, top_k=top_k, seed=5)  # random routers
    pixels, ids = fake_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(image_features(moe, pixels), image_features(dense, pixels), rtol=0, atol=ATOL)
        torch.testing.assert_close(text_features(moe, ids), text_features(dense, ids), rtol=0, atol=ATOL)


def test_top_k_matches_a_per_token_reference_loop():
    ffn = _ffn(seed=3)
    with torch.no_grad():
        ffn.router.weight.mul_(4.0)  # peakier routing, so the choice of experts matters
        h = torch.randn(2, 5, 32)
        out, logits = ffn(h)
        x = h.reshape(-1, 32)
        want = torch.zeros_like(x)
        for t in range(x.shape[0]):
            p = torch.softmax(x[t] @ ffn.router.weight.T, dim=-1)
            g, idx = p.topk(2)
            g = g / g.sum()
            for gate, e in zip(g, idx.tolist()):
                want[t] += gate * ffn.experts[e](x[t:t + 1])[0]
    torch.testing.assert_close(logits, x @ ffn.router.weight.T, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.reshape(-1, 32), want, rtol=0, atol=ATOL)


def _count_calls(modules) -> list[int]:
    calls = [0] * len(modules)
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_experts_no_token_chose_are_not_run():
    ffn = _ffn()
    with torch.no_grad():
        # Positive inputs: logits 1·Σh > 0.5·Σh > 0 > −Σh, so every token picks experts 0 and 1.
        ffn.router.weight.copy_(torch.stack([torch.ones(32), 0.5 * torch.ones(32), -torch.ones(32), -torch.ones(32)]))
        calls = _count_calls(list(ffn.experts))
        ffn(torch.rand(3, 7, 32) + 0.1)
    assert calls == [1, 1, 0, 0]


def test_masked_tokens_get_no_expert_output():
    ffn = _ffn()
    h = torch.randn(2, 4, 32)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out, logits = ffn(h, mask)
        full, full_logits = ffn(h)
    assert torch.equal(logits, full_logits)
    assert torch.all(out[~mask] == 0)
    torch.testing.assert_close(out[mask], full[mask], rtol=0, atol=ATOL)


def test_router_runs_once_per_block_per_forward():
    model = _moe()
    routers = [ffn.router for tower in model.moe_layers().values() for ffn in tower]
    assert len(routers) == 4
    calls = _count_calls(routers)
    pixels, ids = fake_batch(2)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, output_router_logits=True)
    assert calls == [1, 1, 1, 1]
    assert len(out.image_router_logits) == 2 and len(out.text_router_logits) == 2
    assert out.image_router_logits[0].shape == (2 * 17, 4)
    assert out.text_router_logits[0].shape == (2 * 16, 4)
    assert model(input_ids=ids, pixel_values=pixels).image_router_logits is None


def test_moe_layers_config_and_dense_blocks():
    model = _moe(moe_layers_vision=[1], moe_layers_text=[])
    assert [isinstance(layer, MoEEncoderLayer) for layer in model.vision_model.encoder.layers] == [False, True]
    assert not any(isinstance(layer, MoEEncoderLayer) for layer in model.text_model.encoder.layers)
    out = model.get_text_features(fake_batch(2)[1], output_router_logits=True)
    assert out.router_logits == ()
    with pytest.raises(Exception, match="moe_layers_vision"):
        CLIPMoEConfig.from_dense(make_config("tiny"), moe_layers_vision=[2])
    with pytest.raises(Exception, match="top_k"):
        CLIPMoEConfig.from_dense(make_config("tiny"), num_experts=2, top_k=3)


# ------------------------------------------------------------------------------------------- gradients


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    pixels, ids = fake_batch(n, seed=seed)
    return {"pixel_values": pixels, "input_ids": ids}


def test_every_parameter_gets_a_gradient():
    model = _moe(seed=2).train()
    batch = _batch()
    loss, logs = RouterStep(ClipLoss(), alpha=0.01)(model, batch)
    loss.backward()
    with torch.no_grad():
        vision = model.get_image_features(batch["pixel_values"], output_router_logits=True).router_logits
        text = model.get_text_features(batch["input_ids"], output_router_logits=True).router_logits
    assert all((expert_load(v, 2) > 0).all() for v in (vision, text))  # the premise: every expert used
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert {"clip_loss", "balance_loss"} <= set(logs)


def test_gradient_checkpointing_leaves_loss_and_grads_unchanged():
    batch = _batch()
    results = []
    for checkpointing in (False, True):
        model = _moe(seed=4).train()
        if checkpointing:
            enable_grad_checkpointing(model)
        loss, _ = RouterStep(ClipLoss(), alpha=0.01)(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=0, atol=1e-6, msg=name)


def test_router_only_training_changes_only_routers(tmp_path):
    model = _moe(seed=1, expert_dropout=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=2, batch_size=8, lr=1e-2, trainable=["*router*"], log_every=1)
    train(model, SyntheticPairs(16), cfg, tmp_path, step_fn=RouterStep(ClipLoss()), progress=False)
    after = model.state_dict()
    routers = [k for k in before if k.endswith("mlp.router.weight")]
    assert len(routers) == 4
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (k in routers), k
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("balance_loss" in row and "clip_loss" in row for row in log)


# ------------------------------------------------------------------------------------------- balance


# Router probabilities of 3 tokens over 3 experts; logits = log p, so softmax gives p back exactly.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]])
LOGITS = PROBS.log()


def test_switch_balance_by_hand():
    # top-1: experts 0, 1, 0 → f = (2/3, 1/3, 0); P = (1.3, 0.9, 0.8)/3; E Σ f P = 3·3.5/9.
    assert switch_balance_loss([LOGITS]).item() == pytest.approx(3.5 / 3, abs=1e-6)
    assert switch_balance_loss([LOGITS, LOGITS]).item() == pytest.approx(3.5 / 3, abs=1e-6)
    # Token 2 masked: f = (1/2, 1/2, 0), P = (0.4, 0.4, 0.2) → 3·0.4 = 1.2.
    mask = torch.tensor([True, True, False])
    assert switch_balance_loss([LOGITS], mask).item() == pytest.approx(1.2, abs=1e-6)
    uniform = torch.zeros(4, 3)
    assert switch_balance_loss([uniform]).item() == pytest.approx(1.0, abs=1e-6)


def test_mixtral_balance_by_hand():
    # slot 0 picks 0,1,0; slot 1 picks 1,2,2. Σ = (2/3·1.3 + 1/3·0.9)/3 + (1/3·0.9 + 2/3·0.8)/3 = 6/9; ×3 = 2.
    assert mixtral_balance_loss([LOGITS], top_k=2).item() == pytest.approx(2.0, abs=1e-6)
    assert mixtral_balance_loss([LOGITS, LOGITS], top_k=2).item() == pytest.approx(2.0, abs=1e-6)
    # Token 2 masked: slot 0 → (1/2, 1/2, 0), slot 1 → (0, 1/2, 1/2), P = (0.4, 0.4, 0.2): 3·0.7 = 2.1.
    mask = torch.tensor([True, True, False])
    assert mixtral_balance_loss([LOGITS], top_k=2, mask=mask).item() == pytest.approx(2.1, abs=1e-6)


def test_balance_loss_combines_towers():
    img, txt = [LOGITS], [LOGITS, PROBS.flip(0).log()]
    s_img, s_txt = switch_balance_loss(img), switch_balance_loss(txt)
    assert balance_loss("switch", img, txt, 2).item() == pytest.approx(((s_img + 2 * s_txt) / 3).item(), abs=1e-6)
    m_img, m_txt = mixtral_balance_loss(img, 2), mixtral_balance_loss(txt, 2)
    assert balance_loss("mixtral", img, txt, 2).item() == pytest.approx((m_img + 0.5 * m_txt).item(), abs=1e-6)
    with pytest.raises(ValueError):
        balance_loss("other", img, txt, 2)


def test_text_mask_excludes_tokens_after_end_of_text():
    ids = torch.tensor([[BOS_TOKEN_ID, 5, EOS_TOKEN_ID, 0, 0], [BOS_TOKEN_ID, 5, 6, 7, 8]])
    assert text_token_mask(ids).tolist() == [[True, True, True, False, False], [True] * 5]
    # The padding mask changes the text term: padding tokens route differently from real ones.
    model = _moe(seed=3)
    batch = _batch(4)
    with torch.no_grad():
        logits = model.get_text_features(batch["input_ids"], output_router_logits=True).router_logits
    mask = text_token_mask(batch["input_ids"])
    assert not mask.all()
    assert switch_balance_loss(logits, mask).item() != pytest.approx(switch_balance_loss(logits).item(), abs=1e-7)


def test_router_step_is_clip_plus_alpha_balance():
    model = _moe(seed=5)
    batch = _batch()
    with torch.no_grad():
        loss, logs = RouterStep(ClipLoss(), alpha=0.5, kind="mixtral")(model, batch)
    assert loss.item() == pytest.approx(logs["clip_loss"].item() + 0.5 * logs["balance_loss"].item(), abs=1e-6)


# ------------------------------------------------------------------------------------------- packing


def _stage(base: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`base` with fresh FFN weights only (what an MCL stage changes)."""
    stage = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in stage.named_parameters():
            if ".mlp." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return stage


def test_pack_takes_expert_e_from_stage_e():
    base = tiny_model(seed=0)
    stages = [base, _stage(base, 1), _stage(base, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shared weights agree: no warning
        moe = pack(stages, top_k=2, moe_layers_vision=[1], seed=7)
    assert moe.config.num_experts == 3
    # The stages' FFNs of the dense vision block 0 are not used: recorded, not warned about.
    assert [n.split(" (")[0] for n in moe.config.pack_notes] == ["stage 1", "stage 2"]
    assert all("FFN tensors of non-MoE blocks" in n for n in moe.config.pack_notes)
    sd = moe.state_dict()
    for tower, blocks in (("vision_model", [1]), ("text_model", [0, 1])):
        for b in blocks:
            for e, stage in enumerate(stages):
                for part in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                    got = sd[f"{tower}.encoder.layers.{b}.mlp.experts.{e}.{part}"]
                    assert torch.equal(got, stage.state_dict()[f"{tower}.encoder.layers.{b}.mlp.{part}"])
    # The dense vision block 0 and every non-FFN tensor come from stage 0.
    for k, v in base.state_dict().items():
        if k in sd:
            assert torch.equal(sd[k], v), k
    # Routers are seeded.
    again = pack(stages, top_k=2, moe_layers_vision=[1], seed=7).state_dict()
    other = pack(stages, top_k=2, moe_layers_vision=[1], seed=8).state_dict()
    key = "text_model.encoder.layers.0.mlp.router.weight"
    assert torch.equal(sd[key], again[key]) and not torch.equal(sd[key], other[key])


def test_pack_warns_and_records_when_shared_weights_differ():
    base = tiny_model(seed=0)
    odd = _stage(base, 1)
    with torch.no_grad():
        odd.text_model.encoder.layers[0].self_attn.q_proj.weight.add_(1.0)
    with pytest.warns(UserWarning, match="differs from stage 0 in 1 shared"):
        moe = pack([base, odd])
    assert len(moe.config.pack_notes) == 1 and "self_attn.q_proj.weight" in moe.config.pack_notes[0]
    assert torch.equal(moe.text_model.encoder.layers[0].self_attn.q_proj.weight,
                       base.text_model.encoder.layers[0].self_attn.q_proj.weight)


# ------------------------------------------------------------------------------------------- save / load


def test_save_load_and_automodel_give_identical_outputs(tmp_path):
    from transformers import AutoModel

    base = tiny_model(seed=0)
    moe = pack([base, _stage(base, 1), _stage(base, 2), _stage(base, 3)], moe_layers_vision=[1],
               expert_sources=["base", "stage 1", "stage 2", "stage 3"])
    out = io.save(moe, tmp_path / "moe", provenance={"source": "test"})
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["CLIPMoEModel"] and raw["model_type"] == "clipforge_clip_moe"
    assert (raw["num_experts"], raw["top_k"], raw["moe_layers_vision"], raw["moe_layers_text"]) == (4, 2, [1], None)
    assert raw["expert_sources"] == ["base", "stage 1", "stage 2", "stage 3"]
    assert "## Mixture of experts" in (out / "README.md").read_text()

    pixels, ids = fake_batch(3)
    loaded = io.load(out)
    auto = AutoModel.from_pretrained(out).eval()
    assert type(loaded) is CLIPMoEModel and type(auto) is CLIPMoEModel
    with torch.no_grad():
        want_i, want_t = image_features(moe, pixels), text_features(moe, ids)
        for other in (loaded, auto):
            assert torch.equal(image_features(other, pixels), want_i)
            assert torch.equal(text_features(other, ids), want_t)


@pytest.mark.slow
def test_automodel_after_import_clipforge_in_a_fresh_process(tmp_path):
    """`import clipforge` stays light (no transformers); `import clipforge.moe` teaches AutoModel the CLIP-MoE."""
    moe = _moe(seed=6, moe_layers_vision=[0])
    out = io.save(moe, tmp_path / "moe")
    pixels, ids = fake_batch(2)
    torch.save({"pixels": pixels, "ids": ids}, tmp_path / "batch.pt")
    code = (
        "import sys, torch\n"
        "import clipforge\n"
        "assert 'transformers' not in sys.modules\n"
        "import clipforge.moe\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(out)!r}).eval()\n"
        f"b = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        "with torch.no_grad():\n"
        "    f = m.get_image_features(b['pixels']).pooler_output, m.get_text_features(b['ids']).pooler_output\n"
        f"torch.save(f, {str(tmp_path / 'out.pt')!r})\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parent)
    got_i, got_t = torch.load(tmp_path / "out.pt")
    with torch.no_grad():  # another thread count may sum in another order: not bit-equal
        torch.testing.assert_close(got_i, image_features(moe, pixels), rtol=0, atol=1e-6)
        torch.testing.assert_close(got_t, text_features(moe, ids), rtol=0, atol=1e-6)
