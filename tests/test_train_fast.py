"""The training step's speed switches: bf16 detection and use, AdamW kernels, torch.compile fallback, attention."""

from __future__ import annotations

import logging

import pytest
import torch
from _train_worker import SyntheticPairs, resume_config, tiny_model
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.models.registry import build
from clipforge.train import ClipLoss, ClipStep, TrainConfig, fast, train
from clipforge.train.fast import (
    SHORT_SEQUENCE,
    CompiledStep,
    adamw_kwargs,
    attention_kernel,
    longest_sequence,
    resolve_amp,
    resolve_attention,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    assert resolve_amp("auto", CPU) == "off"
    monkeypatch.setattr(fast, "cuda_has_bf16", lambda device: True)  # an A100 / H100
    assert resolve_amp("auto", CUDA) == "bf16"
    monkeypatch.setattr(fast, "cuda_has_bf16", lambda device: False)  # a T4 / V100: fp16 with loss scaling
    assert resolve_amp("auto", CUDA) == "fp16"
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", CPU) == "bf16"
    assert resolve_amp("fp32", CPU) == "off" and resolve_amp("BF16", CPU) == "bf16"
    with pytest.raises(ClipforgeError, match="amp setting 'fp8'"):
        resolve_amp("fp8", CPU)


def test_cpu_flags_detection(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not fast.cpu_has_native_bf16()
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert fast.cpu_has_native_bf16()


class _Recording:
    """The default step, recording whether autocast was on and the dtype the towers computed in."""

    def __init__(self) -> None:
        self.inner, self.seen = ClipStep(ClipLoss()), []

    def __call__(self, model, batch):
        proj = model.visual_projection(torch.zeros(1, model.visual_projection.in_features))
        self.seen.append((torch.is_autocast_enabled("cpu"), proj.dtype))
        return self.inner(model, batch)


@pytest.mark.parametrize("native", [True, False])
def test_train_uses_bf16_autocast_only_when_native(tmp_path, monkeypatch, native):
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: native)
    step = _Recording()
    train(tiny_model(), SyntheticPairs(16), TrainConfig(steps=1, batch_size=8, log_every=0), tmp_path, step_fn=step,
          progress=False)
    assert step.seen == [(True, torch.bfloat16)] if native else [(False, torch.float32)]


def test_adamw_kernel_choice():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert adamw_kwargs("auto", p) == {"fused": True}  # torch has a fused CPU AdamW
    assert adamw_kwargs("foreach", p) == {"foreach": True}
    assert adamw_kwargs("for-loop", p) == {"foreach": False}
    ints = [torch.zeros(2, dtype=torch.long)]  # no fused kernel: auto takes foreach, "fused" says why not
    assert adamw_kwargs("auto", ints) == {"foreach": True}
    with pytest.raises(ClipforgeError, match="no fused AdamW"):
        adamw_kwargs("fused", ints)
    with pytest.raises(ClipforgeError, match="optimizer setting 'sgd'"):
        adamw_kwargs("sgd", p)


def test_fused_foreach_and_for_loop_adamw_agree(tmp_path):
    states, kernels = {}, {}
    for name in ("fused", "foreach", "for-loop"):
        cfg = resume_config(steps=6, save_every=6, optimizer=name)
        states[name] = train(tiny_model(), SyntheticPairs(), cfg, tmp_path / name, progress=False).state_dict()
        ckpt = torch.load(tmp_path / name / "checkpoints" / "step_6.pt", weights_only=True)
        group = ckpt["optimizer"]["param_groups"][0]
        kernels[name] = (group["fused"], group["foreach"])
    assert kernels == {"fused": (True, None), "foreach": (None, True), "for-loop": (None, False)}
    for name in ("foreach", "for-loop"):
        for k, v in states["fused"].items():
            torch.testing.assert_close(v, states[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    moved = [k for k, v in states["fused"].items() if not torch.equal(v, tiny_model().state_dict()[k])]
    assert len(moved) > 10  # the runs trained


def test_default_optimizer_is_fused(tmp_path):
    train(tiny_model(), SyntheticPairs(), resume_config(steps=3, save_every=3), tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoints" / "step_3.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True


def test_compile_is_applied(tmp_path, monkeypatch):
    calls = []

    def spy(module, **kwargs):
        calls.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    train(tiny_model(), SyntheticPairs(), resume_config(steps=2, save_every=0, compile=True), tmp_path,
          progress=False)
    assert calls == ["_StepModule"]


def test_compile_falls_back_when_the_compiler_fails(monkeypatch, caplog):
    model = tiny_model().train()
    batch = {"pixel_values": SyntheticPairs(8).pixel_values, "input_ids": SyntheticPairs(8).input_ids}
    expected = ClipStep(ClipLoss())(model, batch)[0]

    class Module(torch.nn.Module):
        def forward(self, b):
            return ClipStep(ClipLoss())(model, b)[0]

    def broken_compiler(module, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compiler)
    with caplog.at_level(logging.WARNING, logger="clipforge.train"):
        step = CompiledStep(Module())
        out = step(batch)
    assert step.failed and "training eagerly" in caplog.text and "InvalidCxxCompiler" in caplog.text
    torch.testing.assert_close(out, expected)
    assert step.compiled is None and torch.equal(step(batch), out)  # eager from then on

    def no_dynamo(module, **kwargs):
        raise RuntimeError("dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", no_dynamo)
    step = CompiledStep(Module())
    assert step.failed and torch.equal(step(batch), out)


def test_compile_errors_after_the_first_call_propagate(monkeypatch):
    calls = []

    def flaky(module, **kwargs):
        def run(*a, **k):
            calls.append(1)
            if len(calls) > 1:
                raise ValueError("a bug in the step, not the compiler")
            return module(*a, **k)
        return run

    monkeypatch.setattr(torch, "compile", flaky)
    step = CompiledStep(torch.nn.Identity())
    assert step(3) == 3
    with pytest.raises(ValueError, match="a bug"):
        step(4)


def test_attention_implementation_choice():
    batch = SyntheticPairs(4)
    outs = {}
    for attn in ("sdpa", "eager"):
        model = build("tiny", seed=0, attn_implementation=attn)
        assert model.config._attn_implementation == attn
        assert model.text_model.config._attn_implementation == attn
        with torch.no_grad():
            outs[attn] = model(input_ids=batch.input_ids, pixel_values=batch.pixel_values).logits_per_image
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ClipforgeError, match="attention implementation 'flash'"):
        build("tiny", attn_implementation="flash")


def test_attention_auto_is_eager_on_a_cpu_under_bf16_or_for_short_sequences():
    assert resolve_attention("auto", "bf16", CPU) == "eager"
    assert resolve_attention("auto", "off", CPU) == "sdpa"
    assert resolve_attention("auto", "off", CPU, tokens=SHORT_SEQUENCE) == "eager"
    assert resolve_attention("auto", "off", CPU, tokens=SHORT_SEQUENCE + 1) == "sdpa"
    assert resolve_attention("auto", "bf16", CUDA, tokens=8) == "sdpa"
    assert resolve_attention("sdpa", "bf16", CPU) == "sdpa" and resolve_attention("eager", "off", CUDA) == "eager"
    with pytest.raises(ClipforgeError, match="attention setting 'flash'"):
        resolve_attention("flash", "off", CPU)


def test_longest_sequence_reads_both_towers():
    assert longest_sequence(build("ancestry", seed=0)) == 32  # 5x5 patches + 1 = 26 image, 32 text tokens
    assert longest_sequence(build("ViT-B-16", kind="vision", seed=0)) == 197
    assert longest_sequence(nn.Linear(2, 2)) is None


def test_attention_kernel_sets_every_tower_and_puts_it_back():
    model = build("tiny", seed=0)  # sdpa
    configs = [model.config, model.text_model.config, model.vision_model.config]
    with attention_kernel(model, "eager"):
        assert [c._attn_implementation for c in configs] == ["eager"] * 3
    assert [c._attn_implementation for c in configs] == ["sdpa"] * 3
    with pytest.raises(RuntimeError), attention_kernel(model, "eager"):
        raise RuntimeError("a failing step")
    assert [c._attn_implementation for c in configs] == ["sdpa"] * 3


class _KernelRecording(_Recording):
    def __call__(self, model, batch):
        self.seen.append((model.text_model.config._attn_implementation, model.vision_model.config._attn_implementation))
        return self.inner(model, batch)


# the tiny model's sequences are short (SHORT_SEQUENCE), so fp32 "auto" is eager unless the limit is lowered
@pytest.mark.parametrize("native,setting,short,expected", [
    (True, "auto", 0, "eager"), (False, "auto", 0, "sdpa"), (False, "auto", SHORT_SEQUENCE, "eager"),
    (True, "sdpa", SHORT_SEQUENCE, "sdpa"), (False, "eager", 0, "eager")])
def test_train_steps_with_the_resolved_kernel_and_evaluates_with_the_models_own(tmp_path, monkeypatch, native,
                                                                             setting, short, expected):
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(fast, "SHORT_SEQUENCE", short)
    step, seen_eval = _KernelRecording(), []

    def eval_fn(model, _step):
        seen_eval.append(model.config._attn_implementation)
        return {"x": 0.0}

    model = tiny_model()
    train(model, SyntheticPairs(16), TrainConfig(steps=2, batch_size=8, log_every=0, eval_every=2, attention=setting),
          tmp_path, step_fn=step, eval_fn=eval_fn, progress=False)
    assert step.seen == [(expected, expected)] * 2
    assert seen_eval == ["sdpa"] and model.config._attn_implementation == "sdpa"


def test_unknown_attention_setting_fails_before_training(tmp_path):
    with pytest.raises(ClipforgeError, match="attention setting 'flash'"):
        train(tiny_model(), SyntheticPairs(16), TrainConfig(steps=1, batch_size=8, attention="flash"), tmp_path,
              progress=False)
    assert not (tmp_path / "log.jsonl").exists()


def test_eager_and_sdpa_steps_agree(tmp_path):
    """Only roundoff separates the two kernels: after 3 fp32 steps the weights agree closely."""
    models = {}
    for attn in ("sdpa", "eager"):
        models[attn] = train(tiny_model(), SyntheticPairs(16), TrainConfig(steps=3, batch_size=8, log_every=0,
                                                                           amp="off", attention=attn),
                             tmp_path / attn, progress=False)
    for (name, a), b in zip(models["sdpa"].state_dict().items(), models["eager"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_fp16_comes_with_a_loss_scaler_on_cuda_only(monkeypatch):
    from clipforge.train.step import grad_scaler

    monkeypatch.setattr(fast, "cuda_has_bf16", lambda device: True)

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fast.resolve_amp("fp16", cuda) == "fp16"
    assert isinstance(grad_scaler("fp16", cuda), torch.amp.GradScaler)
    assert grad_scaler("bf16", cuda) is None and grad_scaler("auto", cuda) is None and grad_scaler("off", cpu) is None
    monkeypatch.setattr(fast, "cuda_has_bf16", lambda device: False)
    assert isinstance(grad_scaler("auto", cuda), torch.amp.GradScaler)  # auto on a T4 / V100 is fp16, scaled
    with pytest.raises(ClipforgeError, match="CUDA GPUs without bf16"):
        fast.resolve_amp("fp16", cpu)
    with pytest.raises(ClipforgeError, match="fp16"):
        fast.resolve_amp("fp8", cpu)


def test_the_loop_scales_unscales_and_checkpoints_the_scaler(tmp_path, monkeypatch):
    """The loop's fp16 path, exercised on the CPU with torch's CPU scaler standing in for the CUDA one."""
    from clipforge.train import loop

    made = []

    def cpu_scaler(amp, device):
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**8))
        return made[-1]

    monkeypatch.setattr(loop, "grad_scaler", cpu_scaler)
    model = train(tiny_model(), SyntheticPairs(32), resume_config(steps=4, save_every=2, grad_clip=1.0), tmp_path,
                  progress=False)
    assert made and made[0].get_scale() > 0 and all(torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(sorted((tmp_path / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert state["grad_scaler"]["scale"] == made[0].get_scale()
