"""`CLIPMoEModel`: Hugging Face's CLIP with mixture-of-experts FFNs in chosen blocks of both towers.

The module tree is HF's (`vision_model.encoder.layers.{i}.self_attn...`), except that an MoE block's
`mlp` is an `MoEFFN` (`mlp.router`, `mlp.experts.{e}.fc1/fc2`). Each MoE block returns its router
logits and every level hands them up explicitly (no globals, no hooks): ask for them with
`output_router_logits=True` on `get_image_features`, `get_text_features` or `forward`, and one
forward gives both the embeddings and the logits the balance loss needs.

Importing `clipforge.moe` registers the model with `transformers.AutoModel`. This module imports only torch,
transformers and its siblings `config`, `layer` and `models.captions`: a saved directory ships copies
of these four files, so the model loads without clipforge (`trust_remote_code=True`, see `remote`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.models.clip.configuration_clip import CLIPTextConfig, CLIPVisionConfig
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPModel,
    CLIPOutput,
    CLIPPreTrainedModel,
    CLIPTextEmbeddings,
    CLIPTextModel,
    CLIPVisionEmbeddings,
    CLIPVisionModel,
)

from ..captions import caption_end
from .configuration_clip_moe import CLIPMoEConfig
from .moe_layer import MoEFFN

RouterLogits = tuple[Tensor, ...]


@dataclass
class MoESettings:
    """What one tower's MoE blocks look like (read off a `CLIPMoEConfig`)."""

    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    expert_dropout: float

    @classmethod
    def of(cls, config: CLIPMoEConfig, tower: str) -> MoESettings:
        return cls(tuple(config.moe_layers(tower)), config.num_experts, config.top_k, config.expert_dropout)


@dataclass
class MoEModelOutput(BaseModelOutputWithPooling):
    """A tower's output plus `router_logits`: one [B*T, E] fp32 tensor per MoE block, in block order."""

    router_logits: RouterLogits | None = None


@dataclass
class CLIPMoEOutput(CLIPOutput):
    """`CLIPOutput` plus each tower's router logits (when asked for)."""

    image_router_logits: RouterLogits | None = None
    text_router_logits: RouterLogits | None = None


class MoEEncoderLayer(CLIPEncoderLayer):
    """A pre-LN CLIP block whose MLP is an `MoEFFN`; `forward` returns (hidden_states, router_logits)."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig, settings: MoESettings) -> None:
        # Not CLIPEncoderLayer.__init__: it would build (and initialise) a dense MLP only to discard it.
        GradientCheckpointingLayer.__init__(self)
        self.embed_dim = config.hidden_size
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = MoEFFN(config, settings.num_experts, settings.top_k, settings.expert_dropout)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                **kwargs: Any) -> tuple[Tensor, Tensor]:
        attn, _ = self.self_attn(hidden_states=self.layer_norm1(hidden_states), attention_mask=attention_mask,
                                 **kwargs)
        hidden_states = hidden_states + attn
        ffn, router_logits = self.mlp(self.layer_norm2(hidden_states))
        return hidden_states + ffn, router_logits


@dataclass
class MoEEncoderOutput(BaseModelOutput):
    router_logits: RouterLogits | None = None


class MoEEncoder(CLIPEncoder):
    """CLIP's encoder with `MoEEncoderLayer` at the chosen indices; collects their router logits."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig, settings: MoESettings) -> None:
        nn.Module.__init__(self)
        self.config = config
        chosen = set(settings.layers)
        self.layers = nn.ModuleList(
            MoEEncoderLayer(config, settings) if i in chosen else CLIPEncoderLayer(config)
            for i in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False, **kwargs: Any) -> MoEEncoderOutput:
        hidden_states = inputs_embeds
        states = [hidden_states] if output_hidden_states else None
        router_logits = []
        for layer in self.layers:
            out = layer(hidden_states, attention_mask, **kwargs)
            if isinstance(layer, MoEEncoderLayer):
                hidden_states, logits = out
                router_logits.append(logits)
            else:
                hidden_states = out
            if states is not None:
                states.append(hidden_states)
        return MoEEncoderOutput(last_hidden_state=hidden_states,
                                hidden_states=tuple(states) if states is not None else None,
                                router_logits=tuple(router_logits))


def _tower_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the HF output switches a tower handles itself; refuse the one it does not support."""
    kwargs.pop("return_dict", None)
    if kwargs.pop("output_attentions", False):
        raise NotImplementedError("CLIPMoEModel does not return attention maps (output_attentions=True)")
    return kwargs


class SplitPositionTextEmbeddings(CLIPTextEmbeddings):
    """Text embeddings with Long-CLIP's two position tables: positions < `split` read
    `position_embedding`, positions >= `split` read `position_embedding_res` (same shape)."""

    def __init__(self, config: CLIPTextConfig, split: int) -> None:
        super().__init__(config)
        self.split = split
        self.position_embedding_res = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None) -> Tensor:
        seq_length = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[-2]
        if seq_length > self.position_embedding.weight.shape[0]:
            raise ValueError(f"sequence length {seq_length} exceeds max_position_embeddings "
                             f"{self.position_embedding.weight.shape[0]}")
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        # A select, not a masked sum: exact, and it reads each table only where it applies.
        first = (position_ids < self.split).unsqueeze(-1)
        positions = torch.where(first, self.position_embedding(position_ids), self.position_embedding_res(position_ids))
        return inputs_embeds + positions


class MoECLIPTextModel(CLIPTextModel):
    """CLIP's text transformer (no projection) with MoE blocks; returns `MoEModelOutput`."""

    def __init__(self, config: CLIPTextConfig, settings: MoESettings, position_split: int | None = None) -> None:
        CLIPPreTrainedModel.__init__(self, config)
        self.embeddings = (CLIPTextEmbeddings(config) if position_split is None
                           else SplitPositionTextEmbeddings(config, position_split))
        self.encoder = MoEEncoder(config, settings)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, output_router_logits: bool = False,
                output_hidden_states: bool = False, **kwargs: Any) -> MoEModelOutput:
        if input_ids is None:
            raise ValueError("input_ids are required")
        kwargs = _tower_kwargs(kwargs)
        kwargs.pop("is_causal", None)
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        hidden_states = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask,
                                  cache=None)
        enc = self.encoder(hidden_states, mask, output_hidden_states=output_hidden_states, is_causal=True, **kwargs)
        last = self.final_layer_norm(enc.last_hidden_state)
        rows = torch.arange(last.shape[0], device=last.device)
        pooled = last[rows, caption_end(input_ids, self.eos_token_id).to(last.device)]
        return MoEModelOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=enc.hidden_states,
                              router_logits=enc.router_logits if output_router_logits else None)


class MoECLIPVisionModel(CLIPVisionModel):
    """CLIP's vision transformer (no projection) with MoE blocks; returns `MoEModelOutput`."""

    def __init__(self, config: CLIPVisionConfig, settings: MoESettings) -> None:
        CLIPPreTrainedModel.__init__(self, config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = MoEEncoder(config, settings)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values: Tensor | None = None, interpolate_pos_encoding: bool = False,
                output_router_logits: bool = False, output_hidden_states: bool = False,
                **kwargs: Any) -> MoEModelOutput:
        kwargs = _tower_kwargs(kwargs)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(hidden_states)
        enc = self.encoder(hidden_states, None, output_hidden_states=output_hidden_states, **kwargs)
        pooled = self.post_layernorm(enc.last_hidden_state[:, 0, :])
        return MoEModelOutput(last_hidden_state=enc.last_hidden_state, pooler_output=pooled,
                              hidden_states=enc.hidden_states,
                              router_logits=enc.router_logits if output_router_logits else None)


class CLIPMoEModel(CLIPModel):
    """A CLIP whose chosen blocks (both towers) are top-k mixtures of FFN experts.

    `get_image_features` / `get_text_features` return an output with `.pooler_output` (the projected,
    unnormalised embedding) and, with `output_router_logits=True`, `.router_logits`. `forward` returns
    a `CLIPMoEOutput` with `image_router_logits` / `text_router_logits` when asked.
    """

    config_class = CLIPMoEConfig
    config: CLIPMoEConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "MoEEncoderLayer"]

    def __init__(self, config: CLIPMoEConfig) -> None:
        # Not CLIPModel.__init__: it hard-wires the dense towers.
        CLIPPreTrainedModel.__init__(self, config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size
        self.text_model = MoECLIPTextModel(text_config, MoESettings.of(config, "text"), config.text_position_split)
        self.vision_model = MoECLIPVisionModel(vision_config, MoESettings.of(config, "vision"))
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                          position_ids: Tensor | None = None, output_router_logits: bool = False,
                          **kwargs: Any) -> MoEModelOutput:
        """Text tower + projection: `.pooler_output` [B, D]; `.router_logits` when asked."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              output_router_logits=output_router_logits, **kwargs)
        out.pooler_output = self.text_projection(out.pooler_output)
        return out

    def get_image_features(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False,
                           output_router_logits: bool = False, **kwargs: Any) -> MoEModelOutput:
        """Vision tower + projection: `.pooler_output` [B, D]; `.router_logits` when asked."""
        out = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                output_router_logits=output_router_logits, **kwargs)
        out.pooler_output = self.visual_projection(out.pooler_output)
        return out

    def forward(self, input_ids: Tensor | None = None, pixel_values: Tensor | None = None,
                attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                return_loss: bool | None = None, interpolate_pos_encoding: bool = False,
                output_router_logits: bool = False, **kwargs: Any) -> CLIPMoEOutput:
        vision = self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                                         output_router_logits=output_router_logits, **kwargs)
        text = self.get_text_features(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      output_router_logits=output_router_logits, **kwargs)
        image_embeds = vision.pooler_output / vision.pooler_output.norm(dim=-1, keepdim=True)
        text_embeds = text.pooler_output / text.pooler_output.norm(dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        loss = None
        if return_loss:
            labels = torch.arange(len(logits_per_text), device=logits_per_text.device)
            loss = (nn.functional.cross_entropy(logits_per_text, labels)
                    + nn.functional.cross_entropy(logits_per_text.t(), labels)) / 2
        return CLIPMoEOutput(loss=loss, logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                             text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text,
                             vision_model_output=vision, image_router_logits=vision.router_logits,
                             text_router_logits=text.router_logits)

    def moe_layers(self) -> dict[str, list[MoEFFN]]:
        """The MoE modules of each tower, in block order (the order of the router logits)."""
        return {tower: [layer.mlp for layer in getattr(self, f"{tower}_model").encoder.layers
                        if isinstance(layer, MoEEncoderLayer)] for tower in ("vision", "text")}


def moe_param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters stored vs used per token: a token runs top_k of num_experts experts in each MoE block."""
    stored = sum(p.numel() for p in model.parameters())
    idle = experts = routers = 0
    for module in model.modules():
        if isinstance(module, MoEFFN):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            experts += per_expert * module.num_experts
            routers += module.router.weight.numel()
            idle += per_expert * (module.num_experts - module.top_k)
    return {"stored": stored, "active_per_token": stored - idle, "experts": experts, "routers": routers}
