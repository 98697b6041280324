"""Qwen2.5-VL positions of prompts with pruned videos in vLLM (vidpress.serving.vllm_positions) against transformers'
`get_rope_index` on the unpruned prompt restricted to the kept tokens: any number and order of images and videos,
positions written chunk by chunk as vLLM's chunked prefill does. Runs without vLLM."""

import pytest
import torch

from vidpress.serving.vllm_positions import MediaItem, place_media_positions, prompt_positions
from vidpress.testing import tiny_model_and_processor

TEXT = 9  # an ordinary token id


@pytest.fixture(scope="module")
def model():
    return tiny_model_and_processor("qwen2_5_vl")[0]


def random_prompt(model, seed):
    """A prompt of text and 1-4 images / videos in random order, each video pruned to a random kept set.

    Returns (unpruned ids [L], transformers' positions [3, L], keep mask [L], items of the pruned prompt, per item
    its kept tokens' positions relative to its start [3, k])."""
    config = model.config
    merge = config.vision_config.spatial_merge_size
    g = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=g))

    ids, types, keep, image_grids, video_grids, seconds, media = [], [], [], [], [], [], []
    for _ in range(draw(1, 4)):
        ids += [TEXT] * draw(0, 4) + [config.vision_start_token_id]
        video = draw(0, 2) > 0
        t, rows, cols = (draw(1, 4) if video else 1), draw(1, 4), draw(1, 4)
        n = t * rows * cols
        second = [0.5, 1.0, 2.0][draw(0, 2)]
        interval = config.vision_config.tokens_per_second * second if video else 1.0
        kept = torch.arange(n)
        if video and draw(0, 3) > 0:  # pruned: a random subset (sometimes a single token)
            kept = torch.randperm(n, generator=g)[: draw(1, n)].sort().values
        grid = torch.tensor([t, rows * merge, cols * merge])
        relative = model.model.get_vision_position_ids(0, grid, 1, merge, interval)[:, kept]
        media.append((len(ids), kept.numel(), (t, rows, cols), interval, relative))  # start in the unpruned ids
        mask = torch.zeros(n, dtype=torch.bool)
        mask[kept] = True
        ids += [config.video_token_id if video else config.image_token_id] * n
        types += [0] * (len(ids) - n - len(types)) + [2 if video else 1] * n
        keep += [True] * (len(ids) - n - len(keep)) + mask.tolist()
        (video_grids if video else image_grids).append(grid)
        if video:
            seconds.append(second)
        ids.append(config.vision_end_token_id)
    ids += [TEXT] * draw(0, 4)
    types += [0] * (len(ids) - len(types))
    keep += [True] * (len(ids) - len(keep))
    input_ids = torch.tensor([ids])
    expected, _ = model.model.get_rope_index(
        input_ids, torch.tensor([types]),
        image_grid_thw=torch.stack(image_grids) if image_grids else None,
        video_grid_thw=torch.stack(video_grids) if video_grids else None,
        second_per_grid_ts=torch.tensor(seconds) if seconds else None)
    keep = torch.tensor(keep)
    items = [MediaItem(int(keep[:start].sum()), length, grid, interval) for start, length, grid, interval, _ in media]
    return input_ids[0], expected[:, 0], keep, items, [m[4] for m in media]


@pytest.mark.parametrize("seed", range(40))
def test_positions_match_transformers_on_the_kept_tokens(model, seed):
    ids, full, keep, items, relative = random_prompt(model, seed)
    pruned = ids[keep]
    expected = full[:, keep]
    N = pruned.numel()
    positions, _ = prompt_positions(N, items)
    text = ~torch.isin(pruned, torch.tensor([model.config.image_token_id, model.config.video_token_id]))
    assert torch.equal(positions[:, text], expected[:, text])  # text is final before the encoder runs
    # vLLM's chunked prefill: chunks of random sizes; each brings the rows of the media items it overlaps
    g = torch.Generator().manual_seed(1000 + seed)
    done = 0
    media_token_ids = (model.config.image_token_id, model.config.video_token_id)
    while done < N:
        end = min(N, done + int(torch.randint(1, 12, (1,), generator=g)))
        rows = []
        for item, item_rows in zip(items, relative):
            lo, hi = max(done, item.offset), min(end, item.offset + item.length)
            if lo < hi:
                rows.append(item_rows[:, lo - item.offset:hi - item.offset])
        positions, delta = place_media_positions(positions, pruned, rows, done, media_token_ids)
        done = end
    assert torch.equal(positions, expected), (seed, positions, expected)
    assert delta == int(expected.max()) + 1 - N


def test_overlapping_spans_are_refused():
    with pytest.raises(ValueError, match="overlaps another"):
        prompt_positions(10, [MediaItem(1, 4, (1, 2, 2)), MediaItem(3, 4, (1, 2, 2))])
