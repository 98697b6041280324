"""M-RoPE positions of a Qwen2.5-VL prompt whose videos vLLM has pruned, for any number and order of images and
videos (vidpress's Qwen2.5-VL class in vLLM; no vLLM import here).

vLLM computes a request's positions once, before the vision encoder runs, and recomputes them after each prefill
chunk's media embeddings exist. Its own first step (`get_mrope_input_positions`) lays every video out at its
unpruned size while the prompt holds only the retained count, so a media item after a pruned video starts before
the previous one ends and the request fails (`broadcast shape must be non-negative`, which ends the engine); its
recomputation also continues the text after a video at the grid width.

Here both steps follow transformers' `Qwen2_5_VLModel.get_rope_index` on the unpruned prompt, restricted to the kept
tokens (what vidpress does in transformers):
- text: one position per token, all three rows equal, continuing from the previous item;
- an image or video starting at position p: token (t, h, w) of the grid at (p + t * interval, p + h, p + w);
  the text after it continues at p + max(rows, cols) (videos: interval = tokens_per_second * seconds per temporal
  group, truncated; images: 1);
- a pruned video's kept tokens keep their own (t, h, w) positions, so the text after it is where it would be
  unpruned.
Before the encoder runs, a pruned video's slots all hold p (which tokens are kept is not known yet);
`place_media_positions` writes the kept tokens' positions once their embeddings exist.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One image or video in a prompt: its placeholder span [offset, offset + length) and its merged grid.

    grid: (t, rows, cols) after spatial merging; interval: temporal position step per grid step (1 for images).
    length is t * rows * cols unless vLLM pruned the video (then its retained count).
    """

    offset: int
    length: int
    grid: tuple[int, int, int]
    interval: float = 1.0


def grid_positions(grid: tuple[int, int, int], interval: float = 1.0) -> torch.Tensor:
    """(t, h, w) positions [3, t * rows * cols] of a grid starting at 0, raster order (t, then h, then w)."""
    t, rows, cols = grid
    temporal = (torch.arange(t) * interval).long()  # float32 product, truncated: as transformers
    tt, hh, ww = torch.meshgrid(temporal, torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1)


def prompt_positions(num_tokens: int, items: list[MediaItem]) -> tuple[torch.Tensor, int]:
    """Positions [3, num_tokens] of a prompt with `items` (any order of images and videos) and the M-RoPE delta
    (max position + 1 - num_tokens) that decoding continues from. A pruned video's slots hold its start position
    until `place_media_positions` fills them."""
    positions = torch.empty(3, num_tokens, dtype=torch.long)
    cursor, pos = 0, 0  # next token index, next position
    for item in sorted(items, key=lambda m: m.offset):
        if item.offset < cursor or item.offset + item.length > num_tokens:
            raise ValueError(f"vidpress: media span [{item.offset}, {item.offset + item.length}) overlaps another "
                             f"or leaves the {num_tokens}-token prompt")
        text = item.offset - cursor
        positions[:, cursor:item.offset] = torch.arange(pos, pos + text)
        pos += text
        t, rows, cols = item.grid
        span = slice(item.offset, item.offset + item.length)
        if item.length == t * rows * cols:
            positions[:, span] = grid_positions(item.grid, item.interval) + pos
        else:  # a pruned video: which tokens stay is known after the encoder
            positions[:, span] = pos
        pos += max(rows, cols)
        cursor = item.offset + item.length
    positions[:, cursor:] = torch.arange(pos, pos + num_tokens - cursor)
    return positions, int(positions.max()) + 1 - num_tokens if num_tokens else 0


def media_spans(input_ids: torch.Tensor, media_token_ids: tuple[int, ...]) -> list[tuple[int, int]]:
    """[start, end) of each run of media placeholder tokens in `input_ids` [N] (one run per image or video: each is
    wrapped in <|vision_start|> ... <|vision_end|>)."""
    media = torch.isin(input_ids, torch.tensor(media_token_ids, device=input_ids.device)).cpu()
    edges = torch.diff(media.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                       append=torch.zeros(1, dtype=torch.int8))
    starts = (edges == 1).nonzero().squeeze(1).tolist()
    ends = (edges == -1).nonzero().squeeze(1).tolist()
    return list(zip(starts, ends))


def place_media_positions(positions: torch.Tensor, input_ids: torch.Tensor, media_positions: list[torch.Tensor],
                          num_computed_tokens: int, media_token_ids: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """Write the positions of one prefill chunk's media rows into the prompt's positions [3, N].

    media_positions: per media item in the chunk, in prompt order, the (t, h, w) positions [3, k] of its rows
    relative to the item's start (a pruned video's kept tokens only; the first item may continue one that an earlier
    chunk began, from token `num_computed_tokens` on). Text positions from `prompt_positions` stay as they are.
    Returns (positions [3, N], M-RoPE delta).
    """
    positions = positions.clone()
    N = input_ids.numel()
    if media_positions:
        spans = media_spans(input_ids, media_token_ids)
        first = next((i for i, (_, end) in enumerate(spans) if end > num_computed_tokens), len(spans))
        if first + len(media_positions) > len(spans):
            raise ValueError(f"vidpress: {len(media_positions)} media items from token {num_computed_tokens} on, but "
                             f"the prompt has {len(spans) - first} placeholder spans there")
        for i, rows in enumerate(media_positions):
            start, end = spans[first + i]
            begin = start + (max(0, num_computed_tokens - start) if i == 0 else 0)
            if begin + rows.shape[1] > end:
                raise ValueError(f"vidpress: {rows.shape[1]} media rows do not fit the placeholder span "
                                 f"[{start}, {end}) from token {begin}")
            base = positions[0, start - 1] + 1 if start > 0 else 0  # the item starts after the text before it
            positions[:, begin:begin + rows.shape[1]] = rows.to(positions.device, positions.dtype) + base
    return positions, int(positions.max()) + 1 - N if N else 0


__all__ = ["MediaItem", "grid_positions", "media_spans", "place_media_positions", "prompt_positions"]
