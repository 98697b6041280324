"""The long family of the synthetic world: one asked event among many, findable from the question."""

import numpy as np
import pytest
import torch

from vidpress.presses.marc import MarcPress
from vidpress.retrieval import VisualMemoryRetriever
from vidpress.synthetic import (
    COLOUR_NAMES,
    COLOURS,
    FLASH_SHAPES,
    WorldConfig,
    known_families,
    make_example,
    make_split,
)
from vidpress.synthetic.long import LONG_FAMILY, LongConfig
from vidpress.types import Query, VideoTokens

M = 4  # (56 / 28)^2 tokens per temporal token


@pytest.fixture(scope="module")
def examples():
    return make_split("test", 8, families=(LONG_FAMILY,))


def flashes(example):
    return [o for o in example.info["objects"] if o["kind"] == "flash"]


def test_long_examples_are_seeded_and_in_the_shared_splits(examples):
    again = make_split("test", 8, families=(LONG_FAMILY,))
    for a, b in zip(examples, again):
        np.testing.assert_array_equal(a.video, b.video)
        assert (a.question, a.answer, a.seed) == (b.question, b.answer, b.seed)
    assert [e.seed for e in examples] == [e.seed for e in make_split("test", 8)]  # the same seeds as the six
    assert not np.array_equal(make_split("val", 1, families=(LONG_FAMILY,))[0].video, examples[0].video)
    assert LONG_FAMILY in known_families() and len(make_split("test", 6)) == 6  # the default split is unchanged
    for e in examples:
        frames, height, width, _ = e.video.shape
        assert 64 <= frames <= 256 and frames % 2 == 0 and (height, width) == (56, 56)
        assert e.family == LONG_FAMILY and e.video.dtype == np.uint8


@pytest.mark.parametrize("key", ["ring", "shape", "colour"])
def test_the_asked_event_is_the_only_one_matching_the_question(examples, key):
    if key != "ring":
        examples = [make_example(LONG_FAMILY, e.seed, config=LongConfig(key=key)) for e in examples[:4]]
    named, asked = ("colour", "shape") if key == "colour" else ("shape", "colour")
    for e in examples:
        value = e.info[named]
        phrase = (lambda v: f"the {v} flash?") if key == "colour" else (lambda v: f"flashing {v}?")
        values = COLOUR_NAMES if key == "colour" else FLASH_SHAPES
        assert phrase(value) in e.question and sum(phrase(v) in e.question for v in values) == 1
        if key == "ring":
            assert value == "ring"
        events = flashes(e)
        assert len(events) >= 9  # the asked one and at least 8 distractors
        as_value = (lambda o: COLOUR_NAMES[o["colour"]]) if key == "colour" else (lambda o: o["shape"])
        assert [o for o in events if as_value(o) == value] == [events[0]]
        asked_frames = set(events[0]["frames"])
        # nothing else flashes while the asked event is visible
        assert all(not asked_frames & set(o["frames"]) for o in events[1:])
        # the detail asked says nothing by its presence: the distractors show all four values of it
        details = {o[asked] for o in events[1:]}
        assert details == ({0, 1, 2, 3} if asked == "colour" else set(FLASH_SHAPES))
        detail = events[0][asked]
        assert e.options[e.answer] == (COLOUR_NAMES[detail] if asked == "colour" else detail)


def test_answers_are_balanced():
    answers = [e.answer for e in make_split("train", 100, families=(LONG_FAMILY,))]
    assert all(12 <= answers.count(k) <= 38 for k in range(4)), [answers.count(k) for k in range(4)]


def test_answers_and_evidence_are_consistent(examples):
    for e in examples:
        event = flashes(e)[0]
        assert e.options == list(COLOUR_NAMES) and e.answer == event["colour"]
        assert e.question.startswith("What colour was the flashing ring?")
        (mask,) = e.evidence
        assert np.flatnonzero(mask.any(axis=(1, 2))).tolist() == event["frames"]
        np.testing.assert_array_equal(np.unique(e.video[mask], axis=0), COLOURS[event["colour"]][None])
        (tokens,) = e.evidence_tokens()
        groups = e.video.shape[0] // 2
        hit_groups = sorted(set((tokens.nonzero().squeeze(1) // M).tolist()))
        assert tokens.shape == (groups * M,) and hit_groups == e.info["event_groups"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="groups"):
        LongConfig(groups=(4, 8))
    with pytest.raises(ValueError, match="key must be 'ring', 'shape' or 'colour'"):
        LongConfig(key="size")
    with pytest.raises(ValueError, match="LongConfig"):
        make_example(LONG_FAMILY, 0, config=WorldConfig(frames=32))
    with pytest.raises(ValueError, match="families"):
        make_split("test", 1, families=("longer",))


def _oracle_tokens(example) -> VideoTokens:
    """Oracle features [T, M, 5]: per token, a one-hot of the flash shape it holds, plus a constant background."""
    T = example.video.shape[0] // 2
    features = torch.zeros(T, M, len(FLASH_SHAPES) + 1)
    features[..., -1] = 1.0
    for o in flashes(example):
        present = torch.from_numpy(o["token_pixels"].reshape(T, M) > 0)
        features[..., FLASH_SHAPES.index(o["shape"])] += 4.0 * present
    return VideoTokens(features, (T, 2, 2))


def _oracle_text(question: str) -> torch.Tensor:
    """The oracle embedding of a question: a one-hot of the shape it names (background 0)."""
    out = torch.zeros(len(FLASH_SHAPES) + 1)
    for k, shape in enumerate(FLASH_SHAPES):
        out[k] = float(f"flashing {shape}?" in question)
    return out


def test_marc_retrieval_with_oracle_features_finds_the_event(examples):
    for e in examples:
        tokens = _oracle_tokens(e)
        query = Query(torch.zeros(1, dtype=torch.long), embeddings=_oracle_text(e.question)[None])
        (clip,) = MarcPress(top_k=1).retrieve(tokens, query)
        assert set(e.info["event_groups"]) & set(range(*clip))


class _OracleEmbedder:
    """Frames -> one-hot of the flash shapes visible in them (read from the renderer), texts -> the shape named."""

    def __init__(self, example):
        self.by_frame = {}
        for f, frame in enumerate(example.video):
            vector = np.zeros(len(FLASH_SHAPES) + 1, dtype=np.float32)
            vector[-1] = 1.0
            for o in flashes(example):
                vector[FLASH_SHAPES.index(o["shape"])] += 4.0 * (f in o["frames"])
            self.by_frame[frame.tobytes()] = vector

    def embed_frames(self, frames):
        vectors = np.stack([self.by_frame[f.tobytes()] for f in frames])
        return torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1)

    def embed_text(self, texts):
        return torch.nn.functional.normalize(torch.stack([_oracle_text(t) for t in texts]), dim=-1)


def test_the_memory_retriever_with_an_oracle_embedder_finds_the_event(examples):
    for e in examples[:2]:
        retriever = VisualMemoryRetriever(_OracleEmbedder(e), top_k=1, frames_per_clip=None)
        frames, indices = retriever.episodic_video(e.video, e.prompt)
        # the retrieved clip holds the asked event (or, when a cut falls inside it, part of it)
        assert set(flashes(e)[0]["frames"]) & set(indices.tolist())
        assert len(frames) < len(e.video)
