"""Where each caption ends: the one answer every text-token mask and the text pooling use.

Hugging Face's CLIP pools the text tower at the first `eos_token_id`, except for legacy configs
(`eos_token_id: 2`, as the hub's OpenAI CLIPs were published), which pool at the position of the
highest token id: OpenAI's `argmax` pooling, right because `<|endoftext|>` is the last vocabulary
entry. Masks over "real caption tokens" (the balance loss, routing statistics) must follow the same
rule, or a legacy config counts every padding position as text.

This module imports only torch: a CLIP-MoE directory ships it beside its modelling code, so the
model loads with plain transformers (`trust_remote_code=True`) where clipforge is not installed.
"""

from __future__ import annotations

import torch
from torch import Tensor

# transformers' marker for configs written before CLIP's eos id was fixed (they pool at the argmax id).
LEGACY_EOS_TOKEN_ID = 2


def caption_end(input_ids: Tensor, eos_token_id: int) -> Tensor:
    """[B] the position of each row's end-of-text token, exactly where transformers' CLIP pools.

    Legacy configs (`eos_token_id == 2`): the position of the row's highest id. Otherwise the first
    `eos_token_id` (a row without one gives 0, as in transformers).
    """
    ids = input_ids.to(torch.int)
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def caption_mask(input_ids: Tensor, eos_token_id: int) -> Tensor:
    """[B, T] bool: True at the caption's tokens, up to and including its end-of-text token.

    A row with no end-of-text token (only possible for non-legacy configs) counts every position.
    """
    end = caption_end(input_ids, eos_token_id)
    if eos_token_id != LEGACY_EOS_TOKEN_ID:
        found = (input_ids == eos_token_id).any(dim=-1)
        end = torch.where(found, end, torch.full_like(end, input_ids.shape[-1] - 1))
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return positions.unsqueeze(0) <= end.unsqueeze(-1)
