"""The question of one prompt: which text tokens a query-aware press reads (`Adapter.query` builds the `Query`)."""

from __future__ import annotations

import torch


def end_of_turn_ids(model) -> list[int]:
    """The model's EOS ids (generation config, config, text config): where a chat turn ends, e.g. <|im_end|>."""
    config = model.config
    ids = []
    for source in (getattr(model, "generation_config", None), config, config.get_text_config()):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids))


def question_mask(input_ids: torch.Tensor, real: torch.Tensor, visual: torch.Tensor, vision_end: int | None,
                  end_of_turn: list[int]) -> torch.Tensor:
    """[L] bool over one sample's tokens ([L] ids, [L] real and visual-placeholder masks): the user's question, the
    text after the last visual token (placeholder or `vision_end` token) up to the next `end_of_turn` token. Without
    an end-of-turn token it runs to the prompt's end; with no text after the video every text token counts."""
    boundary = visual | (input_ids == vision_end) if vision_end is not None else visual
    positions = torch.arange(input_ids.shape[0], device=input_ids.device)
    start = int(positions[boundary & real].max()) + 1 if bool((boundary & real).any()) else 0
    ends = torch.isin(input_ids, torch.tensor(end_of_turn, dtype=input_ids.dtype, device=input_ids.device))
    ends &= real & (positions >= start)
    end = int(positions[ends].min()) if bool(ends.any()) else input_ids.shape[0]
    mask = real & ~visual & (positions >= start) & (positions < end)
    return mask if bool(mask.any()) else real & ~visual
