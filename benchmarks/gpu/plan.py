"""What the GPU check measures, and at which shapes: one `Plan`, the identity of every unit record.

Plain Python (no torch), so the launcher and the measuring processes read the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

EXPERTS, TOP_K = 4, 2


@dataclass(frozen=True)
class Plan:
    """The shapes, batches and step counts of every unit (registry names for the CLIPs)."""

    quick: bool
    device: str  # "cuda" or "cpu"
    clip: str  # train_step and eval_throughput: a clipforge.models.registry name
    train_batch: int
    warmup: int  # untimed steps (train_step, moe_layer) before the timed ones
    steps: int  # timed steps; each figure is their median
    moe_hidden: int
    moe_intermediate: int
    moe_act: str
    moe_batch: int
    moe_seq: int
    eval_images: int
    eval_image_batch: int
    eval_texts: int
    eval_text_batch: int
    eval_workers: int
    router_clip: str  # router_checkpointing: made a CLIP-MoE with every block MoE
    router_batch: int
    router_warmup: int
    router_steps: int
    experts: int = EXPERTS
    top_k: int = TOP_K
    seed: int = 0

    @property
    def moe_tokens(self) -> int:
        return self.moe_batch * self.moe_seq


def make_plan(quick: bool, device: str, cores: int, **overrides: Any) -> Plan:
    """The plan for `device`: B/16 and L/14 shapes on CUDA (sized for an 80 GB GPU and ten minutes), small
    batches of the same shapes on a CPU, the registry's tiny CLIP with `quick`. `overrides` (None: keep)
    replace single fields (the command's --train-batch, --router-batch, --steps, --warmup, --workers)."""
    if quick:
        plan = Plan(quick, device, "tiny", train_batch=8, warmup=1, steps=3,
                    moe_hidden=32, moe_intermediate=128, moe_act="gelu", moe_batch=8, moe_seq=26,
                    eval_images=64, eval_image_batch=32, eval_texts=128, eval_text_batch=64, eval_workers=0,
                    router_clip="tiny", router_batch=4, router_warmup=1, router_steps=2)
    elif device == "cuda":
        # ViT-B/16 at 128 a step and ViT-L/14 CLIP-MoE (1.2B parameters) at 32: a few GB to ~30 GB each.
        plan = Plan(quick, device, "ViT-B-16", train_batch=128, warmup=3, steps=20,
                    moe_hidden=768, moe_intermediate=3072, moe_act="quick_gelu", moe_batch=64, moe_seq=197,
                    eval_images=4096, eval_image_batch=256, eval_texts=16384, eval_text_batch=1024,
                    eval_workers=min(8, cores), router_clip="ViT-L-14", router_batch=32, router_warmup=2,
                    router_steps=5)
    else:  # the full shapes on a CPU: small batches, few steps (still minutes: use --quick to smoke-test)
        plan = Plan(quick, device, "ViT-B-16", train_batch=8, warmup=1, steps=3,
                    moe_hidden=768, moe_intermediate=3072, moe_act="quick_gelu", moe_batch=8, moe_seq=197,
                    eval_images=32, eval_image_batch=16, eval_texts=128, eval_text_batch=64, eval_workers=0,
                    router_clip="ViT-L-14", router_batch=2, router_warmup=1, router_steps=1)
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def registry_shape(name: str) -> str:
    """A registry architecture in words: each tower's depth × width, patch, image and text context."""
    from clipforge.models.registry import get_config_dict

    spec = get_config_dict(name)
    v, t = spec["vision_config"], spec["text_config"]
    return (f"{name}: vision {v['num_hidden_layers']}x{v['hidden_size']} (patch {v['patch_size']}, "
            f"{v['image_size']} px), text {t['num_hidden_layers']}x{t['hidden_size']} "
            f"({t['max_position_embeddings']} tokens)")
