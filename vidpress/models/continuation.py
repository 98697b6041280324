"""Decoding after a pressed prefill: the cache holds the PRESSED prompt, the caller speaks in its full prompt.

`PromptMap` is attached to such a cache (`cache.vidpress_prompt`) and maps the caller's view onto it: a `generate`
continued from the cache (`continuation`) and each step of the caller's own decoding loop (`decode_step`).
"""

from __future__ import annotations

import torch


class PromptMap:
    """How a pressed prefill's cache maps to the caller's view: the caller's full prompt [B, L] (ids when known)
    and the pressed prompt [B, L'] the cache holds, with its mask and positions. Tokens after the prompt follow
    generate's own rule: position = last prompt position + steps."""

    def __init__(self, original_ids: torch.Tensor | None, original_length: int, pressed: dict):
        self.original_ids, self.original_length = original_ids, original_length
        self.pressed_ids = pressed.get("input_ids")
        self.attention_mask = pressed["attention_mask"]
        self.position_ids = pressed["position_ids"]  # [B, L'] or [R, B, L']
        self.mm_token_type_ids = pressed.get("mm_token_type_ids")

    def _rows(self, rows: int) -> tuple:
        """The map's tensors for `rows` = B * copies rows (several return sequences per prompt)."""
        B = self.attention_mask.shape[0]
        if rows % B:
            raise ValueError(f"continuing a pressed call from its cache: got {rows} rows for a prompt batch of {B}")
        k = rows // B
        mask = self.attention_mask.repeat_interleave(k, 0)
        positions = self.position_ids.repeat_interleave(k, dim=self.position_ids.dim() - 2)
        return k, mask, positions

    def tail_positions(self, positions: torch.Tensor, first: int, count: int) -> torch.Tensor:
        steps = torch.arange(first, first + count, device=positions.device)
        return positions[..., -1:] + steps

    def continuation(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """generate kwargs for `ids` [B, L + n] = the full prompt + n tokens, on the pressed prompt."""
        L = self.original_length
        k, mask, positions = self._rows(ids.shape[0])
        prompt = self.original_ids.repeat_interleave(k, 0).to(ids.device)
        if ids.shape[1] < L or not torch.equal(ids[:, :L], prompt):
            raise ValueError(
                "continuing a pressed generate from its cache: input_ids must start with the full prompt of the call "
                f"that made the cache ({prompt.shape[0]} rows of {L} tokens), as the returned sequences do"
            )
        tail = ids[:, L:]
        new_mask = torch.ones_like(tail) if attention_mask is None else attention_mask[:, L:].to(tail.dtype)
        out = {
            "input_ids": torch.cat([self.pressed_ids.repeat_interleave(k, 0), tail], dim=1),
            "attention_mask": torch.cat([mask, new_mask], dim=1),
            "position_ids": torch.cat([positions, self.tail_positions(positions, 1, tail.shape[1])], dim=-1),
        }
        if self.mm_token_type_ids is not None:
            types = self.mm_token_type_ids.repeat_interleave(k, 0)
            out["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(tail, dtype=types.dtype)], dim=1)
        return out

    def decode_step(self, kwargs: dict, cached: int) -> dict:
        """A decoding step of the caller's own loop: q new tokens after `cached` cached ones. The caller's
        attention mask covers its full sequence [B, L + n]; the cache holds the pressed one [B, L' + n - q]."""
        new = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        rows, q = new.shape[:2]
        k, mask, positions = self._rows(rows)
        n = cached - mask.shape[1] + q  # tokens after the prompt, these q included
        out = {}
        caller_mask = kwargs.get("attention_mask")
        if caller_mask is not None and caller_mask.shape[1] == self.original_length + n:
            out["attention_mask"] = torch.cat([mask, caller_mask[:, self.original_length :].to(mask.dtype)], dim=1)
        elif caller_mask is not None and caller_mask.shape[1] != cached + q:
            raise ValueError(
                f"a decoding step after a pressed prefill got an attention_mask of {caller_mask.shape[1]} tokens; "
                f"expected the full sequence ({self.original_length + n}) or the pressed one ({cached + q})"
            )
        if kwargs.get("position_ids") is None:
            out["position_ids"] = self.tail_positions(positions, n - q + 1, q)
        return out
