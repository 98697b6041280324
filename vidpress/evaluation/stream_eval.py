"""Answering a streaming benchmark's question (`Benchmark.streaming`): the frames before the question's time go to a
`VideoStream` chunk by chunk (each chunk encoded, pressed and prefilled alone, the memory capped by a policy), and the
question is asked there, from the stream's cache, as a live system would."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vidpress.evaluation.benchmarks import Benchmark, Sample
from vidpress.video import VideoDecodeError

#: Frames per chunk by default (2 temporal groups of Qwen-VL; any family takes it).
DEFAULT_CHUNK_FRAMES = 4


@dataclass(frozen=True)
class StreamOptions:
    """How a streaming benchmark's questions are streamed: memory cap (visual tokens; None: unbounded), memory
    policy (None: the stream's default) and frames per chunk."""

    memory_tokens: int | None = None
    policy: str | None = None
    chunk_frames: int = DEFAULT_CHUNK_FRAMES

    def __post_init__(self):
        if self.memory_tokens is not None and self.memory_tokens < 1:
            raise ValueError(f"--memory-tokens must be a positive integer; got {self.memory_tokens}")
        if self.chunk_frames < 1:
            raise ValueError(f"--chunk-frames must be a positive integer; got {self.chunk_frames}")

    def as_dict(self) -> dict:
        return {"memory_tokens": self.memory_tokens, "policy": self.policy, "chunk_frames": self.chunk_frames}


@torch.no_grad()
def answer_streaming(model, processor, benchmark: Benchmark, sample: Sample, press, num_frames: int,
                     max_new_tokens: int, options: StreamOptions) -> dict:
    """Stream the `num_frames` frames the benchmark samples before `sample.ask_at` through a fresh `VideoStream`,
    ask the question there (greedy) and score it. A video that cannot be decoded gives a wrong answer with its error.

    The record has `answer`'s fields (visual_tokens: tokens the stream's chunks brought; kept_tokens: visual tokens
    in the memory when the question was asked) plus ask_at and the stream's evictions.
    """
    from vidpress.streaming import VideoStream

    start = time.perf_counter()
    record = {"id": sample.id, "categories": sample.categories, "answer": sample.answer, "ask_at": sample.ask_at}
    try:
        video = benchmark.frames(sample, num_frames)
    except VideoDecodeError as error:
        return {**record, "response": "", "prediction": None, "correct": False, "error": str(error)}
    stream = VideoStream(model, processor, press=press, memory_tokens=options.memory_tokens, policy=options.policy,
                         system=benchmark.system_prompt)
    frames, seconds = video.frames, list(video.timestamps)
    for begin in range(0, len(frames), options.chunk_frames):
        stream.append(frames[begin : begin + options.chunk_frames], seconds[begin : begin + options.chunk_frames])
    response = stream.ask(benchmark.prompt(sample), max_new_tokens=max_new_tokens)
    stats = stream.stats()
    return {
        **record,
        "response": response,
        "prediction": benchmark.extract(response, sample),
        "parsed": benchmark.parsed(response, sample),
        "correct": benchmark.is_correct(response, sample),
        "visual_tokens": stats["visual_tokens_seen"],
        "kept_tokens": stats["visual_tokens_in_memory"],
        "evicted_tokens": stats["visual_tokens_evicted"],
        "frames": len(frames),
        "seconds": time.perf_counter() - start,
    }
