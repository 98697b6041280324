"""The per-token inputs of a model call, cut with one keep mask and re-padded.

Every input with one entry per token (ids, mask, token types, labels, inputs_embeds, positions) is cut with the
same keep mask [B, L], so a kept token keeps its id, type, label and original position; rows of different kept
lengths are re-padded to the longest, on the side the caller padded.
"""

from __future__ import annotations

import torch

# Per-token model inputs that must be cut with the keep mask, with their padding value (None: pad token id).
SEQUENCE_INPUTS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0, "labels": -100}
# Raw pixel inputs replaced by pre-computed `mm_encoder_outputs`.
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")


def pad_token_id(model) -> int:
    """The model's pad id (generation config, config, then text config), 0 where none is set."""
    for source in (getattr(model, "generation_config", None), model.config, getattr(model.config, "text_config", None)):
        pad = getattr(source, "pad_token_id", None) if source is not None else None
        if isinstance(pad, int):
            return pad
    return 0


def repad_index(keep: torch.Tensor, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For a keep mask [B, L], the gather index [B, L'] of kept positions (order kept) and the valid mask [B, L'].

    Rows are padded to L' = max kept count, on the left (generation) or on the right.
    """
    B, L = keep.shape
    lengths = keep.sum(1)
    new_length = int(lengths.max())
    # A stable sort brings kept positions to the front of each row, in their original order.
    order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :new_length]
    slots = torch.arange(new_length, device=keep.device).expand(B, -1)
    if left:
        shift = (new_length - lengths)[:, None]
        valid = slots >= shift
        order = order.gather(1, (slots - shift).clamp(min=0))
    else:
        valid = slots < lengths[:, None]
    return order, valid


def cut_sequence(inputs: dict, keep: torch.Tensor, real: torch.Tensor, input_ids: torch.Tensor,
                 position_ids: torch.Tensor, pad_id: int) -> tuple[dict, torch.Tensor]:
    """Model kwargs with every per-token input cut to the tokens of `keep` [B, L] and re-padded.

    real [B, L]: the caller's attention mask (its last column says whether it padded on the left); input_ids [B, L]:
    the call's ids (placeholder ids where it passed inputs_embeds alone); position_ids [B, L] or [R, B, L]: the
    full sequence's positions. Returns (kwargs without the pixel inputs, holding the cut mask, ids, token types,
    labels, inputs_embeds and position_ids [.., B, L'], padding positions 0; the cut ids [B, L']).
    """
    left = not bool((~real[:, -1]).any())  # keep right padding only where the caller used it
    gather, valid = repad_index(keep, left)
    out = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS and k != "position_ids"}
    for name, pad in SEQUENCE_INPUTS.items():
        if name == "attention_mask":
            out[name] = valid.long()
        elif inputs.get(name) is not None:
            value = pad_id if pad is None else pad
            out[name] = inputs[name].gather(-1, gather).masked_fill(~valid, value)
    embeds = inputs.get("inputs_embeds")
    if embeds is not None:
        out["inputs_embeds"] = embeds.gather(1, gather[..., None].expand(-1, -1, embeds.shape[-1])) * valid[..., None]
    positions = position_ids.gather(-1, gather.expand(*position_ids.shape[:-2], -1, -1))
    out["position_ids"] = positions.masked_fill(~valid, 0)
    return out, input_ids.gather(-1, gather).masked_fill(~valid, pad_id)
