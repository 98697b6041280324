"""The question of a served prompt, for query-aware presses (CaCoVID) inside vLLM.

vLLM's pruning step sees only the video's encoder output. For a query-aware press the model class of
`vidpress.serving.vllm_models` (the `Query` architectures) has its multimodal processor, which sees the whole prompt
in the API-server process, attach to every video the prompt's text as the transformers path builds it
(`vidpress.models.base.Adapter.query`): the text token ids (visual placeholders removed), their positions and the
video's own positions over the full, unpruned sequence (Qwen2.5-VL's M-RoPE rule, as transformers' `get_rope_index`),
where the video sits among the text, and the question mask. The worker embeds the ids with the LLM's embedding table
and hands the press the same `Query` as `with press(model)` would. Pure torch: no vLLM import here.
"""

from __future__ import annotations

import itertools

import torch

from vidpress.models.query import question_mask
from vidpress.types import Query

#: Per-video field names the processor adds to vLLM's multimodal inputs (one tensor per video).
TEXT_FIELD = "vidpress_query_text"  # LongTensor [5, L]: text ids, their 3 M-RoPE rows, question mask (0/1)
VIDEO_FIELD = "vidpress_query_video"  # LongTensor [3, N + 1]: the video's M-RoPE rows; last column [offset, 0, 0]
FIELDS = (TEXT_FIELD, VIDEO_FIELD)


def end_of_turn_ids(config, generation_config: dict | None = None) -> list[int]:
    """The EOS ids of a model's config, its text config and its generation config (`{"eos_token_id": ...}`), as
    `vidpress.models.query.end_of_turn_ids` reads them from a transformers model: where the question ends."""
    sources = [getattr(config, "eos_token_id", None), getattr(config.get_text_config(), "eos_token_id", None),
               (generation_config or {}).get("eos_token_id")]
    return sorted({eos for value in sources if value is not None
                   for eos in ([value] if isinstance(value, int) else value)})


def qwen2_5_vl_video_queries(prompt_ids: list[int], video_token_id: int, image_token_id: int | None,
                             vision_end_token_id: int | None, end_of_turn: list[int],
                             video_grids: list[tuple[int, int, int]], image_grids: list[tuple[int, int, int]],
                             seconds_per_grid: list[float], spatial_merge_size: int,
                             tokens_per_second: float) -> list[dict[str, torch.Tensor]]:
    """The Query fields of every video of one prompt, Qwen2.5-VL's rule (transformers 5.x `get_rope_index`).

    prompt_ids: the prompt's token ids, each visual item a run of its placeholder id (one token before vLLM expands
    it, or already expanded); grids: (t, h, w) in patches, in prompt order per modality; seconds_per_grid: per video.
    Text runs count on by one per token on all three rows; a visual item of merged grid (t, rows, cols) starting at p
    takes rows (floor(t_i * interval) + p, p + row, p + col), interval = tokens_per_second * seconds per grid for
    videos and 1 for images, and the text after it starts at p + max(rows, cols).
    Returns per video {TEXT_FIELD: [5, L], VIDEO_FIELD: [3, N + 1]} (see the field names above).
    """
    kinds = [2 if token == video_token_id else 1 if token == image_token_id else 0 for token in prompt_ids]
    grids = {1: iter(image_grids), 2: iter(video_grids)}
    seconds = iter(seconds_per_grid)
    full_ids, positions, videos = [], [], []  # the unpruned sequence, its [3] positions, per video (start, count)
    current = 0
    for kind, run in itertools.groupby(zip(prompt_ids, kinds), key=lambda pair: pair[1]):
        run = [token for token, _ in run]
        if kind == 0:
            full_ids += run
            positions.append(torch.arange(current, current + len(run)).expand(3, -1))
            current += len(run)
            continue
        try:
            t, h, w = next(grids[kind])
        except StopIteration:
            raise ValueError(f"vidpress: the prompt has more {'video' if kind == 2 else 'image'} placeholders than "
                             "the request has items") from None
        rows, cols = h // spatial_merge_size, w // spatial_merge_size
        interval = tokens_per_second * float(next(seconds)) if kind == 2 else 1
        grid_t, grid_h, grid_w = torch.meshgrid(
            (torch.arange(t) * interval).long(), torch.arange(rows), torch.arange(cols), indexing="ij")
        item = torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + current
        if kind == 2:
            videos.append((len(full_ids), item.shape[1]))
        full_ids += [run[0]] * item.shape[1]
        positions.append(item)
        current += max(rows, cols)
    ids = torch.tensor(full_ids, dtype=torch.long)
    pos = torch.cat(positions, dim=1)
    visual = (ids == video_token_id) | (ids == image_token_id if image_token_id is not None else False)
    real = torch.ones_like(visual)
    text = ~visual
    mask = question_mask(ids, real, visual, vision_end_token_id, end_of_turn)[text]
    text_field = torch.cat([ids[text][None], pos[:, text], mask.long()[None]])
    out = []
    for start, count in videos:
        offset = int(text[:start].sum())
        video = torch.cat([pos[:, start : start + count], torch.tensor([[offset], [0], [0]])], dim=1)
        out.append({TEXT_FIELD: text_field, VIDEO_FIELD: video})
    return out


def query_from_fields(text_field: torch.Tensor, video_field: torch.Tensor, embed) -> Query:
    """The `Query` of one video from its two fields (`qwen2_5_vl_video_queries`); `embed`: ids [L] -> [L, D], the
    LLM's input embeddings."""
    ids = text_field[0].long()
    with torch.no_grad():
        embeddings = embed(ids)
    return Query(token_ids=ids, embeddings=embeddings, question_mask=text_field[4].bool(),
                 position_ids=text_field[1:4].long(), video_position_ids=video_field[:, :-1].long(),
                 video_offset=int(video_field[0, -1]))
