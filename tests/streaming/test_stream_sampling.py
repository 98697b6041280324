"""`VideoStream.ask` with sampling: seeded, nucleus-restricted, the stream unchanged afterwards."""

import math

import pytest
import torch

from vidpress.streaming import VideoStream
from vidpress.streaming.stream import sample_token
from vidpress.testing import tiny_video

QUESTION = "What happens?"


def test_sample_token_follows_temperature_and_top_p():
    logits = torch.tensor([0.0, math.log(3.0), -1e4])  # probabilities 0.25, 0.75, 0
    generator = torch.Generator().manual_seed(0)
    draws = [sample_token(logits, 1.0, 1.0, generator) for _ in range(2000)]
    assert 0.71 < draws.count(1) / 2000 < 0.79 and 2 not in draws
    # top_p 0.5: the most likely token alone reaches it
    assert {sample_token(logits, 1.0, 0.5, generator) for _ in range(200)} == {1}
    # a low temperature sharpens towards the argmax, a high one flattens
    assert {sample_token(logits, 0.01, 1.0, generator) for _ in range(200)} == {1}
    hot = [sample_token(logits[:2], 100.0, 1.0, generator) for _ in range(2000)]
    assert 0.45 < hot.count(1) / 2000 < 0.55


@pytest.mark.slow
def test_sampled_answers_are_seeded_and_leave_the_stream_as_it_was(tiny_model):
    model, processor = tiny_model("qwen2_5_vl")
    stream = VideoStream(model, processor)
    video = tiny_video(4)
    stream.append(video, [0.0, 0.5, 1.0, 1.5])
    before = [(layer.keys.clone(), layer.values.clone()) for layer in stream.cache.layers]
    first = stream.ask(QUESTION, max_new_tokens=4, do_sample=True, temperature=1.5, seed=3)
    assert stream.ask(QUESTION, max_new_tokens=4, do_sample=True, temperature=1.5, seed=3) == first
    others = {stream.ask(QUESTION, max_new_tokens=4, do_sample=True, temperature=1.5, seed=s) for s in range(4)}
    assert len(others) > 1  # a random-weight model spreads its probability: different seeds differ
    greedy = stream.ask(QUESTION, max_new_tokens=4)
    assert stream.ask(QUESTION, max_new_tokens=4, do_sample=True, temperature=1e-4, seed=1) == greedy
    for (k, v), layer in zip(before, stream.cache.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


@pytest.mark.parametrize("knobs, message", [
    ({"temperature": 0}, "temperature must be a positive number"),
    ({"top_p": 0}, "top_p must be in"), ({"top_p": 1.5}, "top_p must be in"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_sampling_knobs_are_named(tiny_model, knobs, message):
    model, processor = tiny_model("qwen2_5_vl")
    stream = VideoStream(model, processor)
    with pytest.raises(ValueError, match=message):
        stream.ask(QUESTION, do_sample=True, **knobs)
