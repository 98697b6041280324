"""VideoStream: streaming in chunks equals the offline call; asking leaves the stream as it was; eviction keeps
positions; the memory cap holds; each policy's rule."""

import pytest
import torch

from vidpress.models import get_adapter
from vidpress.streaming import POLICIES, MemoryView, VideoStream
from vidpress.streaming.memory import build_policy
from vidpress.testing import FAMILIES, make_inputs, tiny_video

QUESTION = "What happens?"


def stream_clip(model, processor, video, chunk=2, fps=2.0, **kwargs) -> VideoStream:
    stream = VideoStream(model, processor, **kwargs)
    for start in range(0, len(video), chunk):
        stream.append(video[start : start + chunk], [i / fps for i in range(start, min(start + chunk, len(video)))])
    return stream


def offline_logits(stream: VideoStream, question: str) -> torch.Tensor:
    """One forward without a cache over the stream's cached tokens (text rows embedded, visual rows = the cached
    features) and the question, at the stream's positions: [Q, V] logits of the question tokens."""
    model = stream.model
    table = model.get_input_embeddings()
    q_ids = stream.template.question_ids(question)
    ids = torch.cat([stream.slot_ids, q_ids])
    embeds = table(ids).clone()
    visual = torch.cat([stream.slot_kind == 1, torch.zeros(len(q_ids), dtype=torch.bool)])
    embeds[visual] = stream.visual_features.to(embeds.dtype)
    positions = torch.cat([stream.slot_positions, stream.layout.text(len(q_ids))], dim=1)
    if stream.adapter.mrope:
        positions = torch.cat([torch.arange(len(ids))[None], positions])[:, None]
    with torch.no_grad():
        logits = model(inputs_embeds=embeds[None], position_ids=positions,
                       attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
    return logits[-len(q_ids) :]


def cache_snapshot(stream):
    return [(layer.keys.clone(), layer.values.clone()) for layer in stream.cache.layers]


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_equals_offline(tiny_model, family):
    model, processor = tiny_model(family)
    video = tiny_video(8)
    stream = stream_clip(model, processor, video)
    logits = stream.question_logits(QUESTION)
    inputs = make_inputs(processor, [video], QUESTION, fps=2.0)
    stream_ids = torch.cat([stream.slot_ids, stream.template.question_ids(QUESTION)])
    if torch.equal(stream_ids, inputs["input_ids"][0]):
        # the stream's sequence is the processor's for the whole clip: the plain offline call, positions included
        with torch.no_grad():
            reference = model(**inputs).logits[0, -len(logits) :]
        torch.testing.assert_close(logits, reference, atol=2e-5, rtol=1e-4)
    else:  # LLaVA-OneVision: one newline token per chunk instead of one per video
        assert family == "llava_onevision"
    if not get_adapter(model).deepstack:
        torch.testing.assert_close(logits, offline_logits(stream, QUESTION), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", pytest.param("llava_onevision", marks=pytest.mark.slow)])
def test_ask_leaves_the_stream_unchanged(tiny_model, family):
    model, processor = tiny_model(family)
    video = tiny_video(12)
    stream = stream_clip(model, processor, video[:8])
    before = cache_snapshot(stream)
    length = stream.cache_length
    answer = stream.ask(QUESTION, max_new_tokens=4)
    assert isinstance(answer, str)
    assert stream.cache_length == length
    for (k0, v0), layer in zip(before, stream.cache.layers, strict=True):
        assert torch.equal(k0, layer.keys) and torch.equal(v0, layer.values)
    # the stream goes on as if never asked
    stream.append(video[8:12], [4.0, 4.5, 5.0, 5.5])
    fresh = stream_clip(model, processor, video[:8])
    fresh.append(video[8:12], [4.0, 4.5, 5.0, 5.5])
    torch.testing.assert_close(stream.question_logits(QUESTION), fresh.question_logits(QUESTION))


def test_ask_is_greedy_decoding(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    video = tiny_video(8)
    stream = stream_clip(model, processor, video)
    inputs = make_inputs(processor, [video], QUESTION, fps=2.0)
    with torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.batch_decode(reference[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert stream.ask(QUESTION, max_new_tokens=5) == expected


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_cap_never_exceeded(tiny_model, policy):
    model, processor = tiny_model("qwen2_5_vl")
    video = tiny_video(12)
    stream = VideoStream(model, processor, memory_tokens=6, policy=policy)
    for start in range(0, 12, 2):
        stream.append(video[start : start + 2], [start / 2, start / 2 + 0.5])
        assert stream.visual_tokens <= 6
        assert stream.visual_features.shape[0] == stream.visual_tokens == len(stream.visual_frame)
    stats = stream.stats()
    assert stats["visual_tokens_seen"] == 24
    assert stats["visual_tokens_in_memory"] + stats["visual_tokens_evicted"] == 24
    length = stream.cache_length
    stream.ask(QUESTION, max_new_tokens=2)
    assert stream.cache_length == length


def fresh_cache(stream: VideoStream):
    """The cache of one forward without a cache over the stream's cached tokens at their stream positions."""
    model = stream.model
    embeds = model.get_input_embeddings()(stream.slot_ids).clone()
    embeds[stream.slot_kind == 1] = stream.visual_features.to(embeds.dtype)
    positions = stream.slot_positions
    if stream.adapter.mrope:
        positions = torch.cat([torch.arange(positions.shape[1])[None], positions])[:, None]
    with torch.no_grad():
        return model(inputs_embeds=embeds[None], position_ids=positions, use_cache=True,
                     attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long)).past_key_values


def slot_of_position(stream: VideoStream) -> dict:
    """Each cached token's position column (unique within a stream) -> its cache slot."""
    return {tuple(column.tolist()): slot for slot, column in enumerate(stream.slot_positions.T)}


@pytest.mark.parametrize("family", ["qwen2_5_vl", *(pytest.param(f, marks=pytest.mark.slow)
                                                   for f in ("llava_onevision", "llava_next_video"))])
@pytest.mark.parametrize("policy", ["fifo", "uniqueness"])
def test_eviction_keeps_positions(tiny_model, family, policy):
    model, processor = tiny_model(family)
    video = tiny_video(16)
    capped = VideoStream(model, processor, memory_tokens=14, policy=policy)
    unbounded = VideoStream(model, processor)
    first_eviction = None
    for start in range(0, 16, 2):
        for stream in (capped, unbounded):
            stream.append(video[start : start + 2], [start / 2, start / 2 + 0.5])
        if first_eviction is None and capped.stats()["visual_tokens_evicted"]:
            first_eviction = capped.stats()["chunks"] - 1
    assert first_eviction is not None
    rows = slot_of_position(unbounded)
    if policy == "uniqueness":  # evicted from the middle: a kept token is older than an evicted one
        kept = {rows[tuple(c.tolist())] for c in capped.slot_positions[:, capped.slot_kind == 1].T}
        evicted = set((unbounded.slot_kind == 1).nonzero().squeeze(1).tolist()) - kept
        assert min(kept) < max(evicted)
    # Rows of tokens prefilled before the first eviction are the very rows the unbounded stream holds.
    early = (capped.slot_chunk < first_eviction).nonzero().squeeze(1)
    assert early.numel()
    same = torch.tensor([rows[tuple(capped.slot_positions[:, s].tolist())] for s in early])
    for kept, full in zip(capped.cache.layers, unbounded.cache.layers, strict=True):
        assert torch.equal(kept.keys[:, :, early], full.keys[:, :, same])
        assert torch.equal(kept.values[:, :, early], full.values[:, :, same])
    # Every kept key still carries its original position: layer 0's key of a token depends only on its embedding
    # and its position, so it equals a fresh forward's at the stream positions.
    reference = fresh_cache(capped)
    torch.testing.assert_close(capped.cache.layers[0].keys, reference.layers[0].keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(capped.cache.layers[0].values, reference.layers[0].values, atol=1e-5, rtol=1e-5)


def test_uniqueness_evicts_redundant_tokens():
    base = torch.zeros(6, 8)
    base[:, 0] = 1.0
    memory = base.clone()
    memory[4] = torch.tensor([0, 0, 0, 5.0, 0, 0, 0, 0])  # distinct from the rest
    memory[5] = torch.tensor([0, 0, 0, 0, 0, -5.0, 0, 0])
    view = MemoryView(memory, torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1]))
    chosen = build_policy("uniqueness").choose(view, base[:2], torch.tensor([2, 2]), 3)
    assert not ({4, 5} & set(chosen.tolist()))
    assert len(chosen) == 3


def test_fifo_and_recall_rules():
    view = MemoryView(torch.randn(7, 4), torch.tensor([0, 0, 0, 1, 1, 2, 2]), torch.arange(7))
    assert build_policy("fifo").choose(view, torch.randn(2, 4), torch.tensor([9, 9]), 2).tolist() == [0, 1]
    recall = build_policy("recall")
    assert recall.choose(view, torch.randn(2, 4), torch.tensor([9, 9]), 2).tolist() == [0, 1, 2]  # whole chunk 0
    assert recall.choose(view, torch.randn(2, 4), torch.tensor([9, 9]), 4).tolist() == [0, 1, 2, 3, 4]


def test_stc_policy_anchor_spans_evicted_chunks():
    policy = build_policy("stc")
    policy.on_append(None, 0, torch.tensor([[10.0, 0.0], [10.0, 0.0]]))
    policy.on_append(None, 1, torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(policy.anchor(), torch.tensor([5.0, 1.0]))  # mean of chunk means, not of tokens
    torch.testing.assert_close(policy.anchor(torch.tensor([[2.0, 0.0]])), torch.tensor([4.0, 2 / 3]))
    # the memory token nearest the anchor's direction leaves first: channels 2-3 vary most and are left out; each
    # token is its own frame, so the frame term is the same for all
    memory = torch.tensor([[0.1, 1.0, 50.0, -50.0], [1.0, 0.2, -50.0, 50.0], [1.0, 1.0, 30.0, 0.0]])
    policy.total, policy.chunks = torch.tensor([10.0, 2.0, 0, 0]), 2  # chunk means (10, 0, 0, 0), (0, 2, 0, 0)
    view = MemoryView(memory, torch.tensor([1, 1, 1]), torch.tensor([0, 1, 2]))
    chosen = policy.choose(view, torch.tensor([[0.5, 0.5, -30.0, 0.0]]), torch.tensor([3]), 1)
    assert chosen.tolist() == [1]


def test_recall_brings_back_the_closest_clip(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    video = tiny_video(16)
    stream = VideoStream(model, processor, memory_tokens=8, policy="recall", recall_clips=1)
    for start in range(0, 16, 2):
        stream.append(video[start : start + 2], [start / 2, start / 2 + 0.5])
    policy = stream.policy
    assert len(policy.index) == 6  # 8 chunks of 4 tokens, 2 fit
    length = stream.cache_length
    stream.ask(QUESTION, max_new_tokens=2)
    assert stream.cache_length == length
    query = policy.embedder.embed_text([QUESTION])[0]
    best = int(policy.index.search(query, 1)[1][0])
    assert policy.last_recalled == [policy.records[best].index]


def test_bad_input_is_a_clear_error(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    video = tiny_video(4)
    stream = VideoStream(model, processor, memory_tokens=8)
    with pytest.raises(ValueError, match="uint8 frames"):
        stream.append(video.astype("float32"), [0.0, 0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match="timestamps"):
        stream.append(video[:2], [0.0])
    stream.append(video[:2], [0.0, 0.5])
    length = stream.cache_length
    with pytest.raises(ValueError, match="increase"):
        stream.append(video[2:4], [0.2, 0.4])
    assert stream.cache_length == length
    with pytest.raises(ValueError, match="memory_tokens"):
        VideoStream(model, processor, memory_tokens=0)
    with pytest.raises(ValueError, match="more than memory_tokens"):
        VideoStream(model, processor, memory_tokens=2).append(video[:2], [0.0, 0.5])
    with pytest.raises(ValueError, match="before the LLM"):
        VideoStream(model, processor, press="fastv")
    with pytest.raises(ValueError, match="unknown memory policy"):
        VideoStream(model, processor, policy="lru")


def test_any_pre_llm_press_presses_each_chunk_alone(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    video = tiny_video(8)
    stream = stream_clip(model, processor, video, press="vidcom2", retention=0.5)
    stats = stream.stats()
    assert stats["visual_tokens_seen"] == 16 and stats["visual_tokens_pressed_out"] == 8
    assert stream.visual_tokens == 8
    # each chunk is the press's choice on that chunk alone: the kept features are those rows of the chunk
    from vidpress.presses import VidCom2Press

    adapter = get_adapter(model)
    inputs = make_inputs(processor, [video[:2]], QUESTION, fps=2.0)
    with torch.no_grad():
        tokens = adapter.video_layouts(adapter.encode("video", inputs), inputs)[0].tokens
    keep = VidCom2Press(retention=0.5).select(tokens).keep_indices
    torch.testing.assert_close(stream.visual_features[:2], tokens.features.reshape(4, -1)[keep].float())


def test_stats_time_each_stage_of_each_chunk_and_question(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    stream = stream_clip(model, processor, tiny_video(6), memory_tokens=4)
    stream.ask(QUESTION, max_new_tokens=2)
    times = {stage: stream.stage_times(stage) for stage in ("encode", "press", "evict", "prefill", "ask")}
    assert [len(t) for t in times.values()] == [3, 3, 3, 3, 1]
    assert all(ms > 0 for stage in ("encode", "prefill", "ask") for ms in times[stage])
    # the stage laps partition the chunk: together they stay within its measured wall time
    chunk_ms = list(stream._stats.ms_per_chunk)
    assert all(sum(times[s][c] for s in ("encode", "press", "evict", "prefill")) <= chunk_ms[c] + 1e-6
               for c in range(3))
    medians = stream.stats()["stage_ms_median"]
    assert set(medians) == set(times) and medians["ask"] == times["ask"][0]
    with pytest.raises(ValueError, match="unknown stage 'decode'; accepted: encode, press, evict, prefill, ask"):
        stream.stage_times("decode")
