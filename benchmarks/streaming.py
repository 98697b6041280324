"""A long stream through a tiny model: memory (RSS, cache) and per-chunk latency against stream length.

Streams `--frames` frames (default 10,000: 83 minutes of video at 2 fps) in chunks of `--chunk-frames` through
the random-weight tiny model of `--family` with a `--memory-tokens` cap, asking a question every `--ask-every`
chunks, and records after every chunk the process RSS, the cache length (all tokens) and the visual tokens in it,
and the chunk's wall time (encode + press + evict + prefill). Writes a PNG with the three curves and a JSON summary.
Frames cycle through a 240-frame synthetic clip of moving squares, with a per-frame noise pattern so no two frames
are equal.

    python benchmarks/streaming.py                                  # the documented run (docs/streaming.md)
    python benchmarks/streaming.py --frames 2000 --out /tmp/s.png   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import torch

import vidpress  # noqa: F401  (before transformers: torchvision shim)
from vidpress.streaming import POLICIES, VideoStream
from vidpress.testing import FAMILIES, load_tiny, tiny_video

ROOT = Path(__file__).resolve().parents[1]


def frames_at(clip: np.ndarray, start: int, count: int) -> np.ndarray:
    """Frames start..start+count-1 of an endless stream: the clip cycled, plus a per-frame noise pattern."""
    idx = np.arange(start, start + count)
    frames = clip[idx % len(clip)].astype(np.int16)
    noise = np.stack([np.random.RandomState(int(i)).randint(-6, 7, size=clip.shape[1:]) for i in idx])
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model, processor = load_tiny(args.family)
    stream = VideoStream(model, processor, press=args.press, memory_tokens=args.memory_tokens, policy=args.policy,
                         retention=args.retention)
    clip = tiny_video(240, 56, 56, seed=3)
    process = psutil.Process(os.getpid())
    chunks = -(-args.frames // args.chunk_frames)
    # preallocated, so the measurement itself does not grow the process
    log = {key: np.zeros(chunks) for key in ("frames", "ms", "rss_mb", "cache_tokens", "visual_tokens")}
    ask_ms = []
    start = time.perf_counter()
    for c, first in enumerate(range(0, args.frames, args.chunk_frames)):
        count = min(args.chunk_frames, args.frames - first)
        frames = frames_at(clip, first, count)
        seconds = [(first + i) / args.fps for i in range(count)]
        t0 = time.perf_counter()
        stream.append(frames, seconds)
        ms = (time.perf_counter() - t0) * 1000
        for key, value in (("frames", first + count), ("ms", ms), ("rss_mb", process.memory_info().rss / 2**20),
                           ("cache_tokens", stream.cache_length), ("visual_tokens", stream.visual_tokens)):
            log[key][c] = value
        if args.ask_every and (c + 1) % args.ask_every == 0:
            t0 = time.perf_counter()
            stream.ask("What happened so far?", max_new_tokens=4)
            ask_ms.append((time.perf_counter() - t0) * 1000)
    total_s = time.perf_counter() - start
    rows = [{key: float(values[c]) for key, values in log.items()} for c in range(chunks)]

    def window(key, lo, hi):
        values = [r[key] for r in rows[int(lo * len(rows)) : max(int(hi * len(rows)), int(lo * len(rows)) + 1)]]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary = {
        "command": "python benchmarks/streaming.py " + " ".join(args.argv),
        "family": args.family, "frames": args.frames, "chunks": len(rows), "press": args.press,
        "policy": stream.policy.name, "memory_tokens": args.memory_tokens, "threads": args.threads,
        "total_s": total_s, "stats": stream.stats(),
        "ms_per_chunk": {"first_10pct": window("ms", 0.0, 0.1), "last_10pct": window("ms", 0.9, 1.0)},
        "rss_mb": {"at_10pct": rows[len(rows) // 10]["rss_mb"], "at_50pct": rows[len(rows) // 2]["rss_mb"],
                   "at_end": rows[-1]["rss_mb"]},
        "cache_tokens_max": max(r["cache_tokens"] for r in rows),
        "visual_tokens_max": max(r["visual_tokens"] for r in rows),
        "ask_ms_median": statistics.median(ask_ms) if ask_ms else None,
        "load_average": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    plot(rows, summary, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


def plot(rows: list[dict], summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r["frames"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(frames, [r["rss_mb"] for r in rows], lw=1)
    axes[0].set_ylabel("process RSS (MiB)")
    axes[1].plot(frames, [r["cache_tokens"] for r in rows], lw=1, label="cache (all tokens)")
    axes[1].plot(frames, [r["visual_tokens"] for r in rows], lw=1, label="visual tokens")
    if summary["memory_tokens"]:
        axes[1].axhline(summary["memory_tokens"], color="grey", ls="--", lw=0.8, label="memory_tokens cap")
    axes[1].set_ylabel("tokens in the KV cache")
    axes[1].legend(loc="lower right", fontsize=8)
    ms = np.array([r["ms"] for r in rows])
    axes[2].plot(frames, ms, lw=0.3, alpha=0.4, label="each chunk")
    k = max(1, len(ms) // 100)
    smooth = np.convolve(ms, np.ones(k) / k, mode="valid")
    axes[2].plot(frames[k - 1 :], smooth, lw=1.2, label=f"mean of {k} chunks")
    axes[2].set_ylim(0, float(np.percentile(ms, 99.5)) * 1.2)
    axes[2].set_ylabel("ms per chunk")
    axes[2].set_xlabel("frames streamed")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"vidpress stream, tiny {summary['family']}: press {summary['press'] or 'none'}, policy "
                 f"{summary['policy']}, cap {summary['memory_tokens']} visual tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--family", default="qwen2_5_vl", choices=FAMILIES)
    parser.add_argument("--press", default="stc")
    parser.add_argument("--retention", type=float, default=0.5)
    parser.add_argument("--policy", default=None, choices=sorted(POLICIES))
    parser.add_argument("--memory-tokens", type=int, default=256)
    parser.add_argument("--chunk-frames", type=int, default=2)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--ask-every", type=int, default=250, help="chunks between questions (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "streaming.png")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    summary = run(args)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
