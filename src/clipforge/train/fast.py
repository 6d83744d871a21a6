"""The training step's speed switches: bf16 autocast, the attention kernel, the AdamW implementation,
`torch.compile`.

Each switch has an "auto" that picks the fast path the machine supports, measured in
`benchmarks/perf/` (docs/results.md, "Training and evaluation speed"):

* amp "auto": bf16 autocast on CUDA, and on CPUs with native bf16 matmuls (AVX512-BF16 or AMX,
  as oneDNN reports them); fp32 elsewhere, since without them bf16 matmuls are emulated and
  hundreds of times slower than fp32.
* attention "auto": explicit softmax(QK^T)V ("eager") on a CPU when the step runs under bf16 autocast or
  when every sequence is short (at most SHORT_SEQUENCE tokens), torch's scaled_dot_product_attention
  ("sdpa") elsewhere. Only roundoff differs. The rule follows the step times measured in
  `benchmarks/perf/` (torch's bf16 SDPA backward on a CPU is slow; for short sequences eager wins in fp32
  too, for long ones SDPA does).
* optimizer "auto": the fused AdamW kernel where torch has one for every parameter's device and
  dtype (CPU and CUDA), else the multi-tensor ("foreach") one; "for-loop" is torch's CPU default.
* compile: `torch.compile` of the step (model + loss); if the compiler is missing or fails on the
  first call, the step runs eagerly with a warning. Off by default: compiling costs minutes on a
  small CPU, and the text length changes from batch to batch (one recompile with dynamic shapes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ClipforgeError

log = logging.getLogger("clipforge.train")

AMP_CHOICES = ("auto", "bf16", "off")
ATTENTION_CHOICES = ("auto", "sdpa", "eager")
OPTIMIZER_CHOICES = ("auto", "fused", "foreach", "for-loop")
# CPU flags that give native bf16 dot products (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Longest sequence (image patches + class token, or text positions) for which "auto" picks eager attention
# on a CPU in fp32: eager wins at 26-32 tokens, the two are level at 50-77, SDPA wins at 197 (docstring).
SHORT_SEQUENCE = 64


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when bf16 matmuls run natively on this CPU (oneDNN says so, or the CPU flags do)."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def resolve_amp(amp: str, device: torch.device) -> str:
    """"bf16", "fp16" or "off" for the setting `amp` (auto, bf16, fp16, off; none/fp32 mean off) on `device`:
    auto is bf16 where the device has it, else fp16 on CUDA and fp32 on a CPU.

    fp16 is for CUDA GPUs without bf16 (T4, V100) and comes with loss scaling (`grad_scaler`); a CPU has
    no use for it (bf16 or fp32 there) and is refused in one line."""
    mode = {"auto": "auto", "bf16": "bf16", "fp16": "fp16", "off": "off", "none": "off",
            "fp32": "off"}.get(str(amp).lower())
    if mode is None:
        raise ClipforgeError(f"unknown amp setting {amp!r}; choose auto, bf16, fp16 or off")
    if mode == "fp16" and device.type != "cuda":
        raise ClipforgeError(f"--amp fp16 is for CUDA GPUs without bf16 (T4, V100); on {device.type} use bf16 or off")
    if mode == "auto":  # bf16 where the device has it; else fp16 with loss scaling on CUDA, fp32 on a CPU
        if device.type == "cuda":
            return "bf16" if cuda_has_bf16(device) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "off"
    return mode


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 natively (Ampere and later; not a T4 or V100)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_attention(attention: str, amp: str, device: torch.device, tokens: int | None = None) -> str:
    """"sdpa" or "eager" for the setting `attention` (auto, sdpa, eager) of a step under the resolved `amp`
    ("bf16" / "off") on `device`, for a model whose longest sequence is `tokens` (None: unknown). Auto is
    eager on a CPU under bf16 or for sequences of at most SHORT_SEQUENCE tokens (module docstring)."""
    if attention not in ATTENTION_CHOICES:
        raise ClipforgeError(f"unknown attention setting {attention!r}; choose {', '.join(ATTENTION_CHOICES)}")
    if attention == "auto":
        short = tokens is not None and tokens <= SHORT_SEQUENCE
        return "eager" if device.type == "cpu" and (amp == "bf16" or short) else "sdpa"
    return attention


def longest_sequence(model: nn.Module) -> int | None:
    """The most tokens any transformers tower in `model` attends over (image patches + class token, text
    positions), or None when it has no such config."""
    from transformers import PretrainedConfig

    lengths = []
    for m in model.modules():
        c = getattr(m, "config", None)
        if not isinstance(c, PretrainedConfig):
            continue
        for sub in (c, getattr(c, "vision_config", None), getattr(c, "text_config", None)):
            if getattr(sub, "image_size", None) and getattr(sub, "patch_size", None):
                lengths.append((sub.image_size // sub.patch_size) ** 2 + 1)
            elif getattr(sub, "max_position_embeddings", None):
                lengths.append(sub.max_position_embeddings)
    return max(lengths) if lengths else None


@contextlib.contextmanager
def attention_kernel(model: nn.Module, kernel: str) -> Iterator[None]:
    """Run `model` (every transformers sub-model and tower in it) with attention `kernel`, then put back
    each config's own: a saved model keeps the kernel it was loaded with. Modules without a transformers
    config are left alone."""
    from transformers import PretrainedConfig

    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = kernel
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def _fused_ok(params: list[torch.Tensor]) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return all(p.device.type in devices and p.is_floating_point() and not p.is_sparse for p in params)


def adamw_kwargs(optimizer: str, params: Iterable[torch.Tensor]) -> dict[str, Any]:
    """AdamW's `fused` / `foreach` arguments for the setting `optimizer` (see OPTIMIZER_CHOICES)."""
    if optimizer not in OPTIMIZER_CHOICES:
        raise ClipforgeError(f"unknown optimizer setting {optimizer!r}; choose {', '.join(OPTIMIZER_CHOICES)}")
    params = list(params)
    if optimizer == "auto":
        optimizer = "fused" if _fused_ok(params) else "foreach"
    if optimizer == "fused":
        if not _fused_ok(params):
            raise ClipforgeError("optimizer 'fused': torch has no fused AdamW for these parameters' device/dtype")
        return {"fused": True}
    return {"foreach": optimizer == "foreach"}


class CompiledStep(nn.Module):
    """`torch.compile(module)` that falls back to `module` itself when compiling fails.

    The compiler runs on the first call (that is where a missing C++ toolchain shows); on any
    failure there the step runs eagerly from then on, with a warning. Later errors propagate.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.compiled: Any = None
        self.failed = False
        self.calls = 0
        try:
            self.compiled = torch.compile(module)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds here; all mean "no compiler"
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self.failed, self.compiled = True, None
        log.warning("torch.compile unavailable (%s: %s); training eagerly", type(e).__name__, str(e)[:200])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.compiled is None:
            return self.module(*args, **kwargs)
        for a in args:  # captions are trimmed per batch: one dynamic text length, not a graph per length
            if isinstance(a, dict):
                for key in ("input_ids", "attention_mask"):
                    if isinstance(a.get(key), torch.Tensor) and a[key].ndim == 2:
                        torch._dynamo.maybe_mark_dynamic(a[key], 1)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            # On the first call anything may be the compiler's failure (a real error recurs eagerly);
            # later only the compiler's own errors (a recompile that fails) fall back.
            if self.calls > 1 and not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            self._fall_back(e)
            return self.module(*args, **kwargs)
