"""`CLIPMoEConfig`: a CLIP config that also says which blocks are mixtures of experts, and how they route.

A CLIP-MoE checkpoint carries its whole architecture (experts, top-k, which blocks of each tower are
MoE, router options, where each expert came from), so loading it never needs hand-passed arguments.
Importing `clipforge.moe` registers it with `transformers.AutoConfig` (and the model with `AutoModel`).
This module imports only transformers: a saved directory ships a copy of it (see `remote`).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.models.clip.configuration_clip import CLIPConfig

MODEL_TYPE = "clipforge_clip_moe"
BALANCE_LOSSES = ("switch", "mixtral")
TOWERS = ("vision", "text")


@strict
class CLIPMoEConfig(CLIPConfig):
    """CLIP config plus the mixture-of-experts fields.

    num_experts: experts per MoE block (E).
    top_k: experts each token uses (k), their router probabilities renormalised over the k.
    moe_layers_vision / moe_layers_text: 0-based block indices that are MoE; None means every block.
    expert_dropout: dropout probability on each expert's hidden activation (after the activation,
        before `fc2`), active only in training mode, as the released CLIP-MoE code does (0.1 there).
    expert_sources: one string per expert saying where it came from (a stage directory, "copy of ...").
    balance_loss: "switch" (the paper: per block, top-1 counts) or "mixtral" (the released code:
        all blocks of a tower pooled, top-k counts); `balance_alpha` is its weight in router training.
    text_position_split: None for one text position table; an int s (Long-CLIP: 20) for two tables,
        positions < s read `position_embedding`, positions >= s read `position_embedding_res`.
    pack_notes: free-text notes written when the model was assembled (e.g. stages whose non-FFN
        weights differed from stage 0's).
    """

    model_type = MODEL_TYPE

    num_experts: int = 4
    top_k: int = 2
    moe_layers_vision: list[int] | None = None
    moe_layers_text: list[int] | None = None
    expert_dropout: float = 0.1
    expert_sources: list[str] | None = None
    balance_loss: str = "switch"
    balance_alpha: float = 0.01
    text_position_split: int | None = None
    pack_notes: list[str] | None = None

    def validate_moe(self) -> None:
        """Part of the strict-dataclass validation: reject configs no model can be built from."""
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={self.num_experts}], got {self.top_k}")
        if not 0.0 <= self.expert_dropout < 1.0:
            raise ValueError(f"expert_dropout must lie in [0, 1), got {self.expert_dropout}")
        if self.balance_loss not in BALANCE_LOSSES:
            raise ValueError(f"balance_loss must be one of {BALANCE_LOSSES}, got {self.balance_loss!r}")
        if self.expert_sources is not None and len(self.expert_sources) != self.num_experts:
            raise ValueError(f"expert_sources names {len(self.expert_sources)} experts, "
                             f"but num_experts is {self.num_experts}")
        if self.text_position_split is not None and self.text_position_split < 0:
            raise ValueError(f"text_position_split must be >= 0, got {self.text_position_split}")
        for tower in TOWERS:
            layers = getattr(self, f"moe_layers_{tower}")
            depth = self._depth(tower)
            if layers is None or depth is None:
                continue
            bad = [i for i in layers if not 0 <= i < depth]
            if bad or len(set(layers)) != len(layers):
                raise ValueError(f"moe_layers_{tower}={layers}: indices must be distinct and in [0, {depth})")

    def _depth(self, tower: str) -> int | None:
        sub = self.vision_config if tower == "vision" else self.text_config
        return getattr(sub, "num_hidden_layers", None)

    def moe_layers(self, tower: str) -> list[int]:
        """The sorted MoE block indices of `tower` ("vision" or "text"), None resolved to every block."""
        if tower not in TOWERS:
            raise ValueError(f"tower must be 'vision' or 'text', got {tower!r}")
        layers = getattr(self, f"moe_layers_{tower}")
        return sorted(range(self._depth(tower) or 0) if layers is None else layers)

    @classmethod
    def from_dense(cls, dense: CLIPConfig, **moe: Any) -> CLIPMoEConfig:
        """The MoE config of a dense `CLIPConfig`'s architecture, with the MoE fields given in `moe`."""
        cfg = cls(
            text_config=dense.text_config.to_dict(),
            vision_config=dense.vision_config.to_dict(),
            projection_dim=dense.projection_dim,
            logit_scale_init_value=dense.logit_scale_init_value,
            initializer_factor=dense.initializer_factor,
            **moe,
        )
        # The registry records the architecture's name; keep it so cards and reports still show it.
        if getattr(dense, "architecture_name", None):
            cfg.architecture_name = dense.architecture_name
        return cfg
