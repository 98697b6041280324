"""The synthetic video-QA world, its evidence metric, and the shipped reference model (never retrained here)."""

import numpy as np
import pytest
import torch

import vidpress  # noqa: F401  (torchvision shim before any processor import)
from vidpress import video
from vidpress.synthetic import (
    COLOURS,
    FLASH_SHAPES,
    QUADRANTS,
    QUESTION_FAMILIES,
    WorldConfig,
    evidence_hits,
    evidence_recall,
    make_example,
    make_split,
)

T, M = 8, 16  # 16 frames / temporal patch 2, (112 / 28)^2 cells


@pytest.fixture(scope="module")
def examples():
    return make_split("test", 36)  # 6 of each family


def by_family(examples, family):
    return [e for e in examples if e.family == family]


def colour_at(example, mask):
    """The RGB colours found under a bool [F, H, W] mask."""
    return np.unique(example.video[mask], axis=0)


def test_examples_are_deterministic_per_seed():
    a, b = make_split("val", 12), make_split("val", 12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.video, y.video)
        fields = ("question", "options", "answer", "family", "seed")
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields]
        assert all(np.array_equal(m, n) for m, n in zip(x.evidence, y.evidence))
    # `start` picks the same examples out of the same split
    tail = make_split("val", 4, start=8)
    assert [e.seed for e in tail] == [e.seed for e in a[8:]]
    np.testing.assert_array_equal(tail[0].video, a[8].video)
    assert not np.array_equal(make_example("static", 1).video, make_example("static", 2).video)


def test_splits_are_disjoint_and_families_balanced():
    seeds = {split: {e.seed for e in make_split(split, 12)} for split in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])
    assert not (seeds["val"] & seeds["test"])
    families = [e.family for e in make_split("train", 24)]
    assert {f: families.count(f) for f in QUESTION_FAMILIES} == {f: 4 for f in QUESTION_FAMILIES}
    assert families[:6] == list(QUESTION_FAMILIES)  # round-robin
    subset = make_split("train", 6, families=("order", "query"))
    assert [e.family for e in subset] == ["order", "query"] * 3
    with pytest.raises(ValueError):
        make_split("dev", 3)
    with pytest.raises(ValueError):
        make_split("train", 3, families=("nonsense",))


def test_example_format(examples):
    for e in examples:
        assert e.video.shape == (16, 112, 112, 3) and e.video.dtype == np.uint8
        assert len(e.options) == 4 and 0 <= e.answer < 4 and e.answer_letter == "ABCD"[e.answer]
        assert e.question.endswith("Answer with the letter.")
        assert "A. " in e.question and "D. " in e.question
        assert e.evidence and all(m.shape == (16, 112, 112) and m.dtype == bool and m.any() for m in e.evidence)
    answers = [e.answer for e in make_split("train", 60)]
    assert set(answers) == {0, 1, 2, 3}  # the answer letter is not constant


def test_every_answer_colour_is_present_in_every_frame(examples):
    """The pooling shortcut is gone: static distractors show all four answer colours in every frame."""
    for e in examples:
        frames = e.video[[0, 7, 15]]
        for colour in COLOURS:
            assert (frames == colour).all(-1).any(axis=(1, 2)).all(), (e.family, e.seed)


def test_brief_flash_is_in_one_or_two_frames_of_the_answer_colour(examples):
    lengths = set()
    for e in by_family(examples, "brief_event") + by_family(make_split("train", 60), "brief_event"):
        (mask,) = e.evidence
        frames = np.flatnonzero(mask.any(axis=(1, 2)))
        lengths.add(len(frames))
        assert 1 <= len(frames) <= 2
        if len(frames) == 2:  # straddles a temporal pair boundary: each pair sees it in one frame only
            assert frames[1] == frames[0] + 1 and frames[0] % 2 == 1
        np.testing.assert_array_equal(colour_at(e, mask), COLOURS[e.answer][None])
        # Not drawn outside its frames: those pixels hold something else there.
        others = [f for f in range(16) if f not in frames]
        plane = mask[frames[0]]
        assert not (e.video[others][:, plane] == COLOURS[e.answer]).all(-1).all()
    assert lengths == {1, 2}


def test_static_and_small_detail_evidence_is_in_every_frame(examples):
    for family in ("static", "small_detail"):
        for e in by_family(examples, family):
            (mask,) = e.evidence
            assert mask.any(axis=(1, 2)).all()
            np.testing.assert_array_equal(colour_at(e, mask), COLOURS[e.answer][None])
    big = by_family(examples, "static")[0].evidence[0][0].sum()
    small = by_family(examples, "small_detail")[0].evidence[0][0].sum()
    assert big > 10 * small


def test_order_counting_and_query_events(examples):
    for e in by_family(examples, "order"):
        first, second = e.evidence
        assert first.any(axis=(1, 2)).nonzero()[0].max() < second.any(axis=(1, 2)).nonzero()[0].min()
        assert e.options[e.answer] == ["red", "green", "blue", "yellow"][e.answer]
        np.testing.assert_array_equal(colour_at(e, first), COLOURS[e.answer][None])
    counts = set()
    for e in by_family(make_split("train", 60), "counting"):
        assert len(e.evidence) == e.answer + 1 and e.options[e.answer] == str(len(e.evidence))
        counts.add(len(e.evidence))
        # every flash is one token: one temporal pair, one cell
        assert all(int(t.sum()) == 1 for t in e.evidence_tokens())
    assert counts == {1, 2, 3, 4}
    for e in by_family(examples, "query"):
        (mask,) = e.evidence
        flashes = [o for o in e.info["objects"] if o["kind"] == "flash"]
        assert len(flashes) == 4
        assert sorted(o["colour"] for o in flashes) == [0, 1, 2, 3]  # every option is some flash's colour
        assert sorted(o["shape"] for o in flashes) == sorted(FLASH_SHAPES)
        asked = e.info["objects"][e.info["needed"][0]]
        assert f"flashing {asked['shape']}?" in e.question
        np.testing.assert_array_equal(colour_at(e, mask), COLOURS[e.answer][None])
    for e in by_family(make_split("test", 24, config=WorldConfig(query_by="position")), "query"):
        (mask,) = e.evidence
        quadrant = next(q for q in QUADRANTS if q in e.question)
        ys, xs = np.nonzero(mask.any(0))
        top, left = quadrant.startswith("top"), quadrant.endswith("left")
        assert ((ys < 56) if top else (ys >= 56)).all() and ((xs < 56) if left else (xs >= 56)).all()
        np.testing.assert_array_equal(colour_at(e, mask), COLOURS[e.answer][None])


def test_evidence_tokens_and_recall(examples):
    for e in examples:
        tokens = e.evidence_tokens()
        assert len(tokens) == len(e.evidence)
        assert all(t.shape == (T * M,) and t.dtype == torch.bool and t.any() for t in tokens)
        union = torch.stack(tokens).any(0)
        assert evidence_hits(torch.arange(T * M), e)
        assert not evidence_hits((~union).nonzero().squeeze(1), e)
        assert evidence_hits(union.nonzero().squeeze(1), e)
        # a coarser grid: tokens of 56 px cells over 4 frames
        assert e.evidence_tokens(temporal_patch=4, cell=56)[0].shape == (4 * 4,)
    keep_all = [torch.arange(T * M)] * len(examples)
    keep_none = [(~torch.stack(e.evidence_tokens()).any(0)).nonzero().squeeze(1) for e in examples]
    assert evidence_recall(keep_all, examples) == 1.0
    assert evidence_recall(keep_none, examples) == 0.0


def test_brief_flash_tokens_are_located_in_its_frames():
    e = by_family(make_split("test", 60), "brief_event")[0]
    (mask,) = e.evidence
    (tokens,) = e.evidence_tokens()
    grid = tokens.view(T, 4, 4)
    frames = np.flatnonzero(mask.any(axis=(1, 2)))
    assert set(grid.any(-1).any(-1).nonzero().squeeze(1).tolist()) == {int(f) // 2 for f in frames}
    ys, xs = np.nonzero(mask.any(0))
    assert set(grid.any(0).nonzero()[:, 0].tolist()) == set((ys // 28).tolist())
    assert set(grid.any(0).nonzero()[:, 1].tolist()) == set((xs // 28).tolist())
    # min_pixels: a huge threshold leaves no evidence token
    assert not e.evidence_tokens(min_pixels=10_000)[0].any()


def test_counting_and_order_need_every_event(examples):
    for e in by_family(examples, "counting") + by_family(examples, "order"):
        tokens = e.evidence_tokens()
        union = torch.stack(tokens).any(0)
        if len(tokens) == 1:
            continue
        all_but_last = union & ~tokens[-1]
        assert evidence_hits(union.nonzero().squeeze(1), e)
        assert not evidence_hits(all_but_last.nonzero().squeeze(1), e)


def test_world_config_knobs():
    easy = WorldConfig(distractors=0, distractor_flashes=0, noise=0, max_count=2)
    e = make_example("counting", 3, easy)
    assert len(e.evidence) <= 2
    assert len(e.info["objects"]) == len(e.evidence)  # no distractors at all
    shuffled = make_split("train", 24, config=WorldConfig(shuffle_options=True))
    assert any(x.options != ["red", "green", "blue", "yellow"] for x in shuffled if x.family != "counting")
    for x in shuffled:
        assert x.options[x.answer] in x.question
    with pytest.raises(ValueError):
        WorldConfig(size=100)


def test_mp4_round_trip(tmp_path, examples):
    e = examples[0]
    path = e.write_mp4(tmp_path / "clip.mp4")
    decoded = video.load(path)
    assert decoded.frames.shape == e.video.shape
    assert decoded.fps == pytest.approx(8.0)
    assert np.abs(decoded.frames.astype(int) - e.video.astype(int)).mean() < 6
    # the flash survives compression: its pixels are still close to the answer colour
    (mask,) = e.evidence
    assert np.abs(decoded.frames[mask].astype(int) - COLOURS[e.answer]).mean() < 40


# ------------------------------------------------------------------------------------------ reference model


@pytest.fixture(scope="module")
def reference():
    from vidpress.synthetic.reference import load_reference

    return load_reference(attn_implementation="eager")


def test_fast_patchify_matches_the_processor(reference):
    from vidpress.synthetic.reference import example_inputs
    from vidpress.training.reference import fast_pixels

    model, processor = reference
    batch = make_split("val", 3)
    inputs = example_inputs(processor, batch)
    pixels, grid = fast_pixels(model, np.stack([e.video for e in batch]))
    torch.testing.assert_close(pixels, inputs["pixel_values_videos"], atol=1e-5, rtol=0)
    assert torch.equal(grid, inputs["video_grid_thw"])
    assert inputs["video_grid_thw"].tolist() == [[8, 8, 8]] * 3
    assert int((inputs["input_ids"] == 0).sum()) >= 0  # left-padded batch
    assert inputs["attention_mask"][:, -1].all()


@pytest.mark.slow
def test_shipped_reference_model_answers_the_test_slice(reference):
    from vidpress.evaluation.testbed import evaluate_settings
    from vidpress.synthetic.reference import letter_token_ids

    model, processor = reference
    ids = letter_token_ids(processor)
    assert len(set(ids)) == 4
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    result = evaluate_settings(model, processor, make_split("test", 60), {"all": None}, progress=False)["all"]
    assert result["accuracy"] >= 0.85, result


def test_reference_answer_is_the_first_generated_token(reference):
    from vidpress.synthetic.reference import example_inputs

    model, processor = reference
    batch = make_split("test", 2)
    inputs = example_inputs(processor, batch)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    new = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(text.strip() in {"A", "B", "C", "D"} for text in new), new


def test_train_reference_parser_registers_reference():
    import argparse

    from vidpress.cli.train import add_train_reference_parser

    parser = argparse.ArgumentParser(prog="vidpress train")
    add_train_reference_parser(parser.add_subparsers(dest="what", required=True))
    args = parser.parse_args(["reference", "--out", "somewhere", "--stage2-steps", "10", "--threads", "1"])
    assert (args.out, args.stage2_steps, args.threads, args.stage1_steps) == ("somewhere", 10, 1, 400)
    assert callable(args.run)
