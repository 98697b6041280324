"""The `marc-vmr` bench row: MARC's retrieval before the encoder (the shipped dual encoder), then MarcPress."""

import dataclasses

import pytest
import torch

from vidpress.evaluation import testbed
from vidpress.evaluation.marc_vmr import EpisodicMarcPress
from vidpress.models import get_adapter
from vidpress.presses.marc import MarcPress
from vidpress.retrieval import clip_groups
from vidpress.synthetic import make_split
from vidpress.synthetic.reference import example_inputs, letter_token_ids, load_reference
from vidpress.types import VideoTokens


@pytest.fixture(scope="module")
def bench():
    model, processor = load_reference()
    examples = make_split("test", 3, families=("long",))
    return model, processor, examples, testbed.encode(model, processor, examples, 3, progress=False)


def _features(model, processor, example) -> torch.Tensor:
    adapter = get_adapter(model)
    inputs = dict(example_inputs(processor, [example]))
    with torch.no_grad():
        (layout,) = adapter.video_layouts(adapter.encode("video", inputs), inputs)
    return layout.tokens.features


def test_the_vision_tower_encodes_each_temporal_group_on_its_own(bench):
    # why the row may take the once-encoded features of the retrieved groups instead of encoding their frames
    model, processor, examples, _ = bench
    example = examples[0]
    whole = _features(model, processor, example)
    groups = [1, 2, 7, len(whole) - 1]
    frames = torch.tensor([f for g in groups for f in (2 * g, 2 * g + 1)])
    part = _features(model, processor, dataclasses.replace(example, video=example.video[frames.numpy()]))
    torch.testing.assert_close(part, whole[groups], rtol=1e-5, atol=1e-5)


def test_clip_groups_widens_clips_to_whole_groups():
    assert clip_groups([(3, 6), (10, 11)], 2, 12) == [1, 2, 5]
    assert clip_groups([(0, 12)], 2, 12) == list(range(6))
    with pytest.raises(ValueError, match="not whole groups"):
        clip_groups([(0, 3)], 2, 13)
    with pytest.raises(ValueError, match="non-empty frame range"):
        clip_groups([(4, 4)], 2, 12)


def test_marc_vmr_row_keeps_one_frame_of_the_retrieved_groups(bench):
    model, processor, examples, batches = bench
    press, row_model = testbed.build_row("marc-vmr", 1 / 64, model)
    assert isinstance(press, EpisodicMarcPress) and row_model is model
    with press(model) as pressed:
        press.begin_batch(examples)
        retrieved = [clips for _, clips in press._pending]  # what MARC's retriever picked, per video
        pressed.prepare({**batches[0].inputs, "mm_encoder_outputs": {"video": batches[0].video_output}})
        report = pressed.last_report
    for example, clips, video, selection in zip(examples, retrieved, report.videos, report.selections):
        N, M = video.num_tokens, video.tokens_per_frame
        # indices in the whole video's numbering, within the retrieved groups; about one frame's tokens
        assert selection.num_tokens == N and selection.num_kept <= max(1, round(N / 64))
        groups = clip_groups(clips, len(example.video) // video.num_frames, len(example.video))
        assert set((selection.keep_indices // M).tolist()) <= set(groups)
        # the merge is MarcPress's on the retrieved groups' features, placed at their positions in the whole video
        part = MarcPress(budget_tokens=round(N / 64), top_k=None).select(
            VideoTokens(video.features[groups], (len(groups), *video.grid[1:])))
        assert torch.equal(selection.keep_indices, torch.tensor(groups)[part.keep_indices // M] * M
                           + part.keep_indices % M)
        torch.testing.assert_close(selection.features, part.features)
    # retention is relative to the whole video
    assert report.retention == pytest.approx(
        sum(s.num_kept for s in report.selections) / sum(v.num_tokens for v in report.videos))


def test_marc_vmr_with_every_clip_is_marc_without_retrieval(bench):
    model, _, examples, batches = bench
    press = EpisodicMarcPress(retention=1 / 16, top_k=10_000)  # every clip retrieved: the whole video
    press.begin_batch(examples)
    adapter = get_adapter(model)
    for video in [layout.tokens for layout in adapter.video_layouts(batches[0].video_output, batches[0].inputs)]:
        mine = press.select(video)
        marc = MarcPress(retention=1 / 16, top_k=None).select(video)
        assert torch.equal(mine.keep_indices, marc.keep_indices)
        torch.testing.assert_close(mine.features, marc.features)


def test_marc_vmr_at_retention_1_is_the_full_model(bench):
    model, processor, _, batches = bench
    letters = letter_token_ids(processor)
    full = testbed.evaluate_outcome(model, batches, None, letters)
    press, _ = testbed.build_row("marc-vmr", 1.0, model)
    same = testbed.evaluate_outcome(model, batches, press, letters)
    assert [r["answer"] for r in same.records] == [r["answer"] for r in full.records]
    assert same.row["effective_retention"] == 1.0


def test_marc_vmr_errors_are_named(bench):
    _, _, examples, batches = bench
    press = EpisodicMarcPress(retention=1 / 64)
    video = VideoTokens(torch.randn(8, 4, 16), (8, 2, 2))
    with pytest.raises(RuntimeError, match="begin_batch"):
        press.select(video)
    press.begin_batch(examples[:1])
    with pytest.raises(RuntimeError, match="never pressed"):
        press.begin_batch(examples[:1])
    press = EpisodicMarcPress(retention=1 / 64)
    press.begin_batch([dataclasses.replace(examples[0], video=examples[0].video[:14])])
    with pytest.raises(ValueError, match="out of step"):
        press.select(VideoTokens(torch.randn(4, 4, 16), (4, 2, 2)))
    with pytest.raises(ValueError, match="no prompt"):
        press.begin_batch([dataclasses.replace(examples[0], prompt=None)])
    with pytest.raises(ValueError, match="top_k"):
        EpisodicMarcPress(top_k=0)
    with pytest.raises(ValueError, match="not a directory"):
        EpisodicMarcPress(embedder="/nonexistent")


def test_marc_vmr_is_a_long_family_row():
    assert "marc-vmr" in testbed.default_names("long") and "marc-vmr" not in testbed.default_names()
    assert testbed.press_class("marc-vmr") is EpisodicMarcPress


def test_clips_retrieved_earlier_press_like_begin_batch_and_a_token_budget(bench):
    # C-GRPO retrieves once per training video (`retrieve`) and hands the clips over per batch (`begin_clips`)
    model, _, examples, batches = bench
    videos = [layout.tokens for layout in get_adapter(model).video_layouts(batches[0].video_output, batches[0].inputs)]
    press = EpisodicMarcPress(budget_tokens=4)
    clips = press.retrieve(examples)
    press.begin_batch(examples)
    direct = [press.select(v) for v in videos]
    press.begin_clips(clips)
    again = [press.select(v) for v in videos]
    for a, b, video in zip(direct, again, videos):
        assert torch.equal(a.keep_indices, b.keep_indices) and a.num_kept == 4  # one frame's 2 x 2 tokens
        torch.testing.assert_close(a.features, b.features)
    press.begin_clips(clips[:1])
    assert press.select(VideoTokens(videos[0].features[:1], (1, 2, 2))).num_kept == 4  # budget >= N: every token
    with pytest.raises(ValueError, match="budget_tokens"):
        EpisodicMarcPress(budget_tokens=0)
