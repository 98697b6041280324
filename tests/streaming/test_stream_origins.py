"""Where a stream's cached visual tokens came from (`visual_origin`), and what a question saw
(`last_question_origins`, recalled chunks included): the facts the streaming bench scores evidence with."""

import pytest
import torch

from vidpress.streaming import VideoStream
from vidpress.testing import tiny_video

QUESTION = "What happens?"


def feed(stream, video, chunk=2):
    for start in range(0, len(video), chunk):
        stream.append(video[start : start + chunk], [i / 2 for i in range(start, start + chunk)])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_origins_name_the_kept_tokens_of_the_stream_grid(tiny_model, family):
    model, processor = tiny_model(family)
    whole = VideoStream(model, processor)
    feed(whole, tiny_video(8))
    per_frame = int((whole.visual_origin >= 0).sum()) // whole.groups_seen
    assert torch.equal(whole.visual_origin[whole.visual_origin >= 0], torch.arange(whole.groups_seen * per_frame))
    stream = VideoStream(model, processor, press="random", retention=0.5)
    feed(stream, tiny_video(8))
    grid = stream.visual_origin[stream.visual_origin >= 0]
    assert grid.numel() < whole.groups_seen * per_frame
    assert grid.unique().numel() == grid.numel() and int(grid.max()) < stream.groups_seen * per_frame
    # every token's origin lies in the temporal group the stream recorded for it
    frames = stream.visual_frame[stream.visual_origin >= 0]
    assert torch.equal(grid // per_frame, frames)
    # LLaVA-OneVision's newline per chunk is not a grid token
    assert int((stream.visual_origin < 0).sum()) == (len(stream.chunks) if family == "llava_onevision" else 0)
    stream.question_logits(QUESTION)
    assert torch.equal(stream.last_question_origins, stream.visual_origin)


def test_eviction_keeps_the_origins_of_the_kept_tokens(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    full = VideoStream(model, processor)
    capped = VideoStream(model, processor, memory_tokens=8)  # fifo: the newest 8 tokens stay
    video = tiny_video(8)
    feed(full, video)
    feed(capped, video)
    assert torch.equal(full.visual_origin, torch.arange(full.visual_tokens))
    assert torch.equal(capped.visual_origin, full.visual_origin[-8:])


def test_a_question_under_recall_sees_the_recalled_chunks(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    stream = VideoStream(model, processor, memory_tokens=8, policy="recall", recall_clips=1)
    feed(stream, tiny_video(8))
    length = stream.cache_length
    stream.question_logits(QUESTION)  # no recall
    assert torch.equal(stream.last_question_origins, stream.visual_origin)
    stream.question_logits(QUESTION, recall=True)
    assert stream.cache_length == length
    (recalled,) = stream.policy.last_recalled
    record = stream.policy.records[next(r for r, rec in stream.policy.records.items() if rec.index == recalled)]
    assert torch.equal(stream.last_question_origins, torch.cat([stream.visual_origin, record.origins]))
    assert not torch.isin(record.origins, stream.visual_origin).any()
