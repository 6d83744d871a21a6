"""The CLIP-MoE section of a model card (`clipforge.models.io.model_card` renders the rest)."""

from __future__ import annotations

from torch import nn

from ...markdown import table
from .modeling_clip_moe import CLIPMoEModel, moe_param_counts


def card_section(model: nn.Module) -> str:
    """The model card's MoE section (empty for other models)."""
    if not isinstance(model, CLIPMoEModel):
        return ""
    cfg = model.config
    counts = moe_param_counts(model)
    lines = ["## Mixture of experts", "",
             f"{cfg.num_experts} experts per MoE block, top-{cfg.top_k} routing (softmax in fp32, the top-k "
             f"probabilities renormalised), expert dropout {cfg.expert_dropout} in training.", ""]
    lines += table(["tower", "MoE blocks"], [[t, ", ".join(map(str, cfg.moe_layers(t))) or "none"]
                                             for t in ("vision", "text")])
    lines += ["", f"Parameters: {counts['stored']:,} stored, {counts['active_per_token']:,} active per token "
                  f"(routers: {counts['routers']:,}).",
              f"Balance loss for router training: {cfg.balance_loss}, alpha {cfg.balance_alpha}."]
    if cfg.text_position_split is not None:
        lines.append(f"Text positions: Long-CLIP two tables, split at {cfg.text_position_split}.")
    lines += ["", "Experts:"]
    sources = cfg.expert_sources or ["unknown"] * cfg.num_experts
    lines += [f"- expert {e}: {src}" for e, src in enumerate(sources)]
    for note in cfg.pack_notes or []:
        lines.append(f"- note: {note}")
    return "\n".join(lines)
