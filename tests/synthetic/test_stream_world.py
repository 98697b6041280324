"""The synthetic world's streaming family: answers follow the events before the question's time, and the evidence
says which memory can answer."""

import numpy as np
import pytest
import torch

from vidpress.synthetic.stream_world import (
    STREAM_KINDS,
    StreamConfig,
    make_stream,
    make_stream_split,
    stream_evidence_hits,
)
from vidpress.synthetic.world import COLOURS, FLASH_SHAPES


@pytest.fixture(scope="module")
def streams():
    return make_stream_split("test", 6)


def _groups_of(mask: torch.Tensor, cells: int) -> set[int]:
    return {int(i) // cells for i in mask.nonzero().flatten()}


def test_streams_are_seeded_and_splits_disjoint(streams):
    again = make_stream_split("test", 2, start=1)
    for a, b in zip(streams[1:3], again):
        assert a.seed == b.seed and np.array_equal(a.video, b.video)
        assert [q.question for q in a.questions] == [q.question for q in b.questions]
    val = make_stream_split("val", 1)[0]
    assert val.seed != streams[0].seed and not np.array_equal(val.video, streams[0].video)
    assert not np.array_equal(streams[0].video, streams[1].video)


def test_every_stream_asks_each_kind_once_in_time_order(streams):
    config = StreamConfig()
    for s in streams:
        assert s.video.shape == (config.frames, 112, 112, 3) and s.video.dtype == np.uint8
        assert sorted(q.kind for q in s.questions) == sorted(STREAM_KINDS)
        assert [q.frame for q in s.questions] == sorted(q.frame for q in s.questions)
        for q in s.questions:
            assert q.frame % config.segment_frames == 0 and 0 < q.frame <= config.frames
            assert q.time == q.frame / s.fps and q.question.startswith(q.prompt)


def test_answers_follow_the_events_before_the_question(streams):
    config = StreamConfig()
    for s in streams:
        flashes = s.info["flashes"]
        assert len({f["shape"] for f in flashes}) == len(flashes) == config.flashes
        for q in s.questions:
            if q.kind == "count":
                assert int(q.options[q.answer]) == sum(f["frame"] < q.frame for f in flashes) >= 1
            elif q.kind == "past":
                shape = next(sh for sh in FLASH_SHAPES if f"flashing {sh}?" in q.question)
                flash = next(f for f in flashes if f["shape"] == shape)
                assert flash["frame"] < q.frame - config.segment_frames // 2 and q.answer == flash["colour"]
                # the flash is drawn in its frame: its cell shows the answer colour there and not a frame later
                i, j = flash["cell"]
                cell = s.video[flash["frame"], i * 28:(i + 1) * 28, j * 28:(j + 1) * 28]
                assert (cell == COLOURS[q.answer]).all(-1).sum() >= 14 * 14 // 4
            else:  # present: the large shape's colour in the latest frame, another one in the segment before
                y0, x0, y1, x1 = s.info["big_box"]
                centre = s.video[q.frame - 1, (y0 + y1) // 2, (x0 + x1) // 2]
                before = s.video[q.frame - config.segment_frames - 1, (y0 + y1) // 2, (x0 + x1) // 2]
                assert (centre == COLOURS[q.answer]).all() and not (before == COLOURS[q.answer]).all()


def test_evidence_lies_before_the_question_and_the_present_in_the_latest_segment(streams):
    config = StreamConfig()
    tp, cells, seg = config.world.temporal_patch, config.cells, config.segment_frames // config.world.temporal_patch
    for s in streams:
        for q in s.questions:
            assert q.evidence and all(e.shape == (config.groups * cells,) and e.any() for e in q.evidence)
            groups = set().union(*(_groups_of(e, cells) for e in q.evidence))
            assert max(groups) < q.frame // tp
            if q.kind == "count":
                assert len(q.evidence) == int(q.options[q.answer])
            if q.kind == "present":
                end = q.frame // tp
                assert groups == set(range(end - seg, end))


def test_the_present_is_answerable_only_from_the_latest_segment_and_the_past_only_from_its_event(streams):
    config = StreamConfig()
    cells, seg = config.cells, config.segment_frames // config.world.temporal_patch
    everything = torch.arange(config.groups * cells)
    for s in streams:
        for q in s.questions:
            end = q.frame // config.world.temporal_patch
            latest = torch.arange((end - seg) * cells, end * cells)
            older = torch.arange(0, (end - seg) * cells)
            assert stream_evidence_hits(everything, q)
            assert not stream_evidence_hits(torch.empty(0, dtype=torch.long), q)
            if q.kind == "present":
                assert stream_evidence_hits(latest, q) and not stream_evidence_hits(older, q)
            if q.kind == "past":
                event = q.evidence[0].nonzero().flatten()
                assert stream_evidence_hits(event, q)
                assert not stream_evidence_hits(everything[~q.evidence[0]], q)
            # tokens outside the grid (-1: a LLaVA newline) are ignored
            assert stream_evidence_hits(torch.cat([torch.tensor([-1]), everything]), q)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="out of range"):
        stream_evidence_hits(torch.tensor([10**6]), make_stream(0).questions[0])
    with pytest.raises(ValueError, match="split must be one of"):
        make_stream_split("dev", 1)
    with pytest.raises(ValueError, match="segments"):
        StreamConfig(segments=1)
    with pytest.raises(ValueError, match="segment_frames"):
        StreamConfig(segment_frames=15)
    with pytest.raises(ValueError, match="flashes"):
        StreamConfig(flashes=5)
    with pytest.raises(ValueError, match="fps"):
        StreamConfig(fps=0)


def test_a_shorter_stream_config_is_honoured():
    config = StreamConfig(segments=3, segment_frames=8, flashes=2)
    s = make_stream(7, config)
    assert s.video.shape[0] == 24 and len(s.info["shape_colours"]) == 3 and len(s.info["flashes"]) == 2
    assert all(e.shape == (12 * 16,) for q in s.questions for e in q.evidence)
