"""STC: the cacher's released rule (exact at update_ratio 1 and on repeated frames, work saved as counted) and the
pruner's memory."""

import pytest
import torch

from vidpress.models import get_adapter
from vidpress.presses import STCPress
from vidpress.streaming import VideoStream
from vidpress.streaming.stc import STCEncoderCache
from vidpress.testing import tiny_video
from vidpress.types import VideoTokens

TOWERS = ["llava_onevision", "llava_next_video"]  # SigLIP and CLIP vision layers


def encode(model, processor, video, cache=None):
    adapter = get_adapter(model)
    inputs = dict(processor.video_processor(videos=[video], do_sample_frames=False, return_tensors="pt"))
    with torch.no_grad(), (cache.active() if cache is not None else torch.no_grad()):
        return adapter.encode("video", inputs).pooler_output


@pytest.mark.parametrize("family", TOWERS)
def test_cacher_recomputing_every_patch_is_the_plain_encoder(tiny_model, family):
    model, processor = tiny_model(family)
    video = tiny_video(6)
    cache = STCEncoderCache.for_model(get_adapter(model), update_ratio=1.0)
    torch.testing.assert_close(encode(model, processor, video, cache), encode(model, processor, video),
                               atol=1e-5, rtol=1e-5)
    assert cache.work_saved == 0 and cache.frame == 6


@pytest.mark.parametrize("family", TOWERS)
def test_cacher_reuses_work_on_repeated_frames(tiny_model, family):
    model, processor = tiny_model(family)
    static = tiny_video(1).repeat(6, 0)
    adapter = get_adapter(model)
    cache = STCEncoderCache.for_model(adapter)
    torch.testing.assert_close(encode(model, processor, static, cache), encode(model, processor, static),
                               atol=1e-5, rtol=1e-5)
    layers = len(adapter.vision_layers())
    patches = cache.rows_total // (6 * layers)
    u = max(1, int(patches * 0.25))
    # frames 1, 3, 5 reuse every row but the u least similar ones, in every layer
    assert cache.rows_reused == 3 * layers * (patches - u)
    # a moving clip changes the output (the reuse is approximate) but keeps the reference frames exact
    video = tiny_video(6)
    moving = encode(model, processor, video, STCEncoderCache.for_model(adapter))
    plain = encode(model, processor, video)
    assert not torch.allclose(moving, plain, atol=1e-4)
    M = plain.shape[0] // 6 if plain.dim() == 2 else None
    if M is not None:  # LLaVA-NeXT-Video: [T * M, D] rows; frames 0, 2, 4 are references
        for f in (0, 2, 4):
            torch.testing.assert_close(moving[f * M : (f + 1) * M], plain[f * M : (f + 1) * M], atol=1e-5, rtol=1e-5)


def test_cacher_state_spans_chunks(tiny_model):
    model, processor = tiny_model("llava_onevision")
    cache = STCEncoderCache.for_model(get_adapter(model))
    video = tiny_video(4)
    encode(model, processor, video[:1], cache)  # frame 0: reference
    encode(model, processor, video[1:2], cache)  # frame 1: reuses frame 0
    assert cache.frame == 2 and cache.rows_reused > 0


def test_cacher_is_off_for_qwen_vision_blocks(tiny_model, caplog):
    model, processor = tiny_model("qwen2_5_vl")
    assert STCEncoderCache.for_model(get_adapter(model)) is None
    stream = VideoStream(model, processor, press="stc")
    video = tiny_video(4)
    stream.append(video, [0, 0.5, 1, 1.5])
    assert stream.stats()["encoder_work_saved"] == 0.0
    assert "encoder cache" in caplog.text


def test_pruner_memory_spans_the_chunks_of_a_stream():
    g = torch.Generator().manual_seed(0)
    tokens = VideoTokens(torch.randn(6, 9, 16, generator=g), (6, 3, 3))
    press = STCPress(retention=3 / 9)
    whole = press.select(tokens)  # one frame per chunk, memory fresh for the video
    memory = press.stream_memory()
    chunks = [press.select_chunk(VideoTokens(tokens.features[t : t + 1], (1, 3, 3)), memory) for t in range(6)]
    assert memory.chunks == 6
    assert torch.equal(whole.keep_indices, torch.cat([c.keep_indices + t * 9 for t, c in enumerate(chunks)]))
    assert press.select(tokens).keep_indices.tolist() == whole.keep_indices.tolist()  # no state leaks across videos
    assert whole.frame_budgets.tolist() == [3] * 6


def test_pruner_rule_step_by_step():
    """Released rule 11 written out for two chunks of random tokens: channels, memory anchor, scores, smallest kept."""
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(2, 9, 8, generator=g), torch.randn(2, 9, 8, generator=g)]
    press = STCPress(retention=4 / 9)
    memory = press.stream_memory()
    means = []
    for chunk in chunks:
        kept = press.select_chunk(VideoTokens(chunk, (2, 3, 3)), memory)
        x = chunk.reshape(18, 8)
        channels = x.var(0, unbiased=False).topk(4, largest=False).indices
        means.append(x[:, channels].mean(0))
        anchor = torch.stack(means).mean(0)
        anchor = anchor / anchor.norm()
        unit = x[:, channels] / x[:, channels].norm(dim=-1, keepdim=True)
        expected = []
        for f in range(2):
            rows = unit[f * 9 : (f + 1) * 9]
            centre = rows.mean(0)
            score = sum(torch.exp(-((rows - anchor) ** 2).sum(-1) / (2 * a))
                        + torch.exp(-((rows - centre) ** 2).sum(-1) / (2 * a)) for a in (0.125, 0.25, 0.5, 1, 2))
            expected += sorted((score.argsort()[:4] + f * 9).tolist())
        assert kept.keep_indices.tolist() == expected
    assert memory.chunks == 2
    # the memory changes the choice: the second chunk alone (fresh memory) keeps other tokens
    alone = press.select_chunk(VideoTokens(chunks[1], (2, 3, 3)), press.stream_memory())
    assert alone.keep_indices.tolist() != kept.keep_indices.tolist()
