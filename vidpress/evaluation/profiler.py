"""`vidpress profile`: what one prefill and decode cost with all visual tokens and with a press, stage by stage.

For one model, one input and one press, `profile` measures each stage of answering, for the full model and the
pressed one, from the same encoded video:

    vision encoder  ->  press (positions, selection, slicing)  ->  LLM prefill  ->  decode, per new token

and reports, per side: median wall time of each stage, visual tokens and sequence length the LLM sees, peak
memory (CUDA max allocated on GPU, growth of the resident set on CPU; see `memory.PeakMemory`) and FLOPs.
FLOPs are counted by `torch.utils.flop_counter` on the operations that really run (matrix products,
convolutions, attention; attention counted as dense, without a causal discount), during each stage's warm-up run.
The full and pressed prefills alternate, so a load change on a shared machine affects both alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from vidpress.evaluation.memory import PeakMemory
from vidpress.inputs import build_inputs, frames_metadata, pad_frames
from vidpress.models import get_adapter
from vidpress.models.sequence import PIXEL_INPUTS


@dataclass
class StageCosts:
    """One side ("full" or "pressed") of a profile.

    *_ms: median milliseconds (decode: per generated token, after the first); press_ms is 0 for the full model.
    visual_tokens: video tokens the LLM receives; sequence_length: prompt tokens the LLM prefills.
    peak_mem_mb: the largest of the stage peaks (vision encoder, press, LLM prefill) above what was in use before.
    flops: vision + press + LLM prefill FLOPs; the *_flops fields split them.
    """

    vision_ms: float
    press_ms: float
    llm_prefill_ms: float
    decode_ms_per_token: float
    visual_tokens: int
    sequence_length: int
    peak_mem_mb: float | None
    flops: int
    vision_flops: int
    press_flops: int
    llm_prefill_flops: int
    vision_peak_mem_mb: float | None
    llm_peak_mem_mb: float | None


@dataclass
class Profile:
    """Both sides of one profile, measured from the same encoded video.

    prefill_speedups: full / pressed LLM prefill time of each interleaved repeat (the two runs of a pair are
    back to back, so a slow spell of the machine slows both); `prefill_speedup` is their median.
    """

    full: StageCosts
    pressed: StageCosts
    prefill_speedups: list[float]

    @property
    def prefill_speedup(self) -> float:
        return statistics.median(self.prefill_speedups)

    @property
    def sequence_ratio(self) -> float:
        return self.full.sequence_length / self.pressed.sequence_length

    def to_json(self, setup: dict) -> dict:
        """{"full": {...}, "pressed": {...}, "prefill_speedup", "prefill_speedups"}: every StageCosts field plus
        `setup` (what was profiled) in each side, and the speed-up (median) with its per-repeat values."""
        return {"full": {**asdict(self.full), "setup": setup}, "pressed": {**asdict(self.pressed), "setup": setup},
                "prefill_speedup": self.prefill_speedup, "prefill_speedups": self.prefill_speedups}


@dataclass
class _Run:
    ms: float
    flops: int
    peak_mb: float | None
    times: list[float]


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and P V of one attention call: 4 * batch * query heads * L_q * L_k * head dim."""
    batch, heads, length_q, dim = query_shape
    return 4 * batch * heads * length_q * key_shape[-2] * dim


def flop_counter() -> FlopCounterMode:
    """A FLOP counter that also counts the CPU SDPA kernel (as Q K^T and P V)."""
    # torch's counter knows the CUDA attention kernels but not the CPU one SDPA dispatches to.
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _attention_flops})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stage:
    """The measurements of one stage. A stage function calls `with span():` around exactly the work measured;
    the warm-up span counts FLOPs, the timed spans record wall time and peak memory."""

    def __init__(self, device: torch.device):
        self.device, self.flops, self.times, self.peaks = device, 0, [], []

    @contextlib.contextmanager
    def warmup(self):
        with flop_counter() as counter:
            yield
        self.flops = counter.get_total_flops()

    @contextlib.contextmanager
    def timed(self):
        with PeakMemory(self.device) as peak:
            _sync(self.device)
            start = time.perf_counter()
            yield
            _sync(self.device)
            self.times.append((time.perf_counter() - start) * 1000)
        self.peaks.append(peak.mb)

    def result(self) -> _Run:
        return _Run(statistics.median(self.times), self.flops, None if None in self.peaks else max(self.peaks),
                    list(self.times))


def _measure(fns: list, repeats: int, device: torch.device, bar) -> list[_Run]:
    """Run each `fn(span)` once to warm up (counting FLOPs), then `repeats` timed times, the fns alternating."""
    stages = [_Stage(device) for _ in fns]
    for fn, stage in zip(fns, stages):
        fn(stage.warmup)
        bar.update()
    for _ in range(repeats):
        for fn, stage in zip(fns, stages):
            fn(stage.timed)
            bar.update()
    return [stage.result() for stage in stages]


class _StepClock(LogitsProcessor):
    """Notes the time at each generation step: the gap between two calls is one decode forward."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def _decode_ms_per_token(generate, tokens: int, device: torch.device) -> float:
    """Median ms between consecutive generation steps over `tokens` new tokens (EOS suppressed until then)."""
    clock = _StepClock(device)
    generate(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
             logits_processor=LogitsProcessorList([clock]))
    gaps = [(b - a) * 1000 for a, b in zip(clock.stamps, clock.stamps[1:])]
    return statistics.median(gaps)


@torch.no_grad()
def profile(model, inputs: dict, press, repeats: int = 3, decode_tokens: int = 16, progress: bool = True) -> Profile:
    """Profile `inputs` (one prompt with video, straight from the processor) with all tokens and with `press`.

    The video is encoded once; both sides are fed the same features. The full model runs outside any press
    block; each pressed run enters its own. repeats: timed runs per stage after one warm-up; decode_tokens:
    tokens generated to time decoding (at least 2).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    if decode_tokens < 2:
        raise ValueError("decode_tokens must be at least 2 (decode time is the gap between steps); "
                         f"got {decode_tokens}")
    adapter = get_adapter(model)
    if not adapter.has_video(inputs):
        raise ValueError("the inputs hold no video (pixel_values_videos); build them with the model's processor")
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"profile one prompt at a time; got a batch of {inputs['input_ids'].shape[0]}")
    device = model.device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    bar = tqdm(total=4 * (repeats + 1) + 2, desc="profiling", disable=not progress)

    def vision(span):
        with span():
            adapter.encode("video", inputs)

    bar.set_postfix_str("vision encoder")
    (vision_run,) = _measure([vision], repeats, device, bar)
    encoded = {"video": adapter.encode("video", inputs)}
    full = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}
    full["mm_encoder_outputs"] = encoded

    def precomputed() -> dict:
        return {**full, "mm_encoder_outputs": dict(encoded)}

    reports = []

    def press_step(span):
        with press(model) as pressed, span():
            pressed.prepare(precomputed())

    def prefill_full(span):
        with span():
            model(**full, logits_to_keep=1)

    def prefill_pressed(span):
        with press(model) as pressed:
            kwargs = pressed.prepare(precomputed())
            # passthrough: the hook leaves the prepared inputs alone; presses acting inside the LLM still run.
            with span(), pressed.passthrough():
                model(**kwargs, logits_to_keep=1)
            reports.append(pressed.last_report)

    bar.set_postfix_str("press")
    (press_run,) = _measure([press_step], repeats, device, bar)
    bar.set_postfix_str("LLM prefill, full and pressed")
    full_run, pressed_run = _measure([prefill_full, prefill_pressed], repeats, device, bar)
    bar.set_postfix_str("decode")
    decode_full = _decode_ms_per_token(lambda **g: model.generate(**full, **g), decode_tokens, device)
    bar.update()
    with press(model):
        decode_pressed = _decode_ms_per_token(lambda **g: model.generate(**precomputed(), **g), decode_tokens, device)
    bar.update()
    bar.close()

    def side(press_costs: _Run | None, prefill: _Run, decode_ms: float, tokens: int, length: int) -> StageCosts:
        press_ms, press_flops = (press_costs.ms, press_costs.flops) if press_costs else (0.0, 0)
        peaks = [vision_run.peak_mb, prefill.peak_mb] + ([press_costs.peak_mb] if press_costs else [])
        return StageCosts(
            vision_ms=vision_run.ms, press_ms=press_ms, llm_prefill_ms=prefill.ms, decode_ms_per_token=decode_ms,
            visual_tokens=tokens, sequence_length=length,
            peak_mem_mb=None if None in peaks else max(peaks),
            flops=vision_run.flops + press_flops + prefill.flops, vision_flops=vision_run.flops,
            press_flops=press_flops, llm_prefill_flops=prefill.flops,
            vision_peak_mem_mb=vision_run.peak_mb, llm_peak_mem_mb=prefill.peak_mb,
        )

    report = reports[-1]
    before, after = report.sequence_length
    return Profile(
        full=side(None, full_run, decode_full, report.visual_tokens_before, before),
        pressed=side(press_run, pressed_run, decode_pressed, report.visual_tokens_after, after),
        prefill_speedups=[a / b for a, b in zip(full_run.times, pressed_run.times)],
    )


def format_profile(result: Profile) -> str:
    """A plain-text table: one row per measure, columns full / pressed / full-to-pressed ratio."""
    full, pressed = asdict(result.full), asdict(result.pressed)
    rows = [
        ("visual tokens", "visual_tokens", "{:.0f}"), ("sequence length", "sequence_length", "{:.0f}"),
        ("vision encoder ms", "vision_ms", "{:.1f}"), ("press ms", "press_ms", "{:.1f}"),
        ("LLM prefill ms", "llm_prefill_ms", "{:.1f}"), ("decode ms/token", "decode_ms_per_token", "{:.1f}"),
        ("peak memory MB", "peak_mem_mb", "{:.0f}"), ("GFLOPs (vision+press+prefill)", "flops", "{:.1f}"),
        ("  LLM prefill GFLOPs", "llm_prefill_flops", "{:.1f}"),
    ]
    lines = [f"{'':30} {'full':>12} {'pressed':>12} {'ratio':>8}"]
    for label, key, fmt in rows:
        a, b = full[key], pressed[key]
        if key.endswith("flops"):
            a, b = a / 1e9, b / 1e9
        cells = ["-" if v is None else fmt.format(v) for v in (a, b)]
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"{label:30} {cells[0]:>12} {cells[1]:>12} {ratio:>8}")
    speedups = result.prefill_speedups
    spread = f", range {min(speedups):.2f}-{max(speedups):.2f}" if len(speedups) > 1 else ""
    lines.append(
        f"LLM prefill speed-up {result.prefill_speedup:.2f}x (median of {len(speedups)} interleaved full/pressed "
        f"pairs{spread}) for a sequence {result.sequence_ratio:.2f}x shorter "
        f"({result.prefill_speedup / result.sequence_ratio:.2f} of the token-count ratio)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalCosts:
    """What retrieving the top-k event clips BEFORE the vision encoder saves and costs, for one video and question.

    *_full: the vision encoder on every sampled frame; *_retrieved: on the frames of the retrieved clips only
    (MARC's episodic memory video). vision_ms_*: median ms; vision_flops_*: FLOPs of one encoder call.
    index_ms / index_flops: segmenting, embedding and indexing the video, paid once per video (a saved
    VideoMemory is reused by later questions). query_ms / query_flops: embedding the question, searching the
    index and gathering the episodic video, paid per question.
    """

    clips: int
    clips_retrieved: int
    frames_full: int
    frames_retrieved: int
    visual_tokens_full: int
    visual_tokens_retrieved: int
    vision_ms_full: float
    vision_ms_retrieved: float
    vision_flops_full: int
    vision_flops_retrieved: int
    index_ms: float
    index_flops: int
    query_ms: float
    query_flops: int


@torch.no_grad()
def profile_retrieval(model, processor, retriever, frames, question: str, video=None, frame_indices=None,
                      fps: float = 2.0, repeats: int = 3, progress: bool = True) -> RetrievalCosts:
    """Vision-encoder cost of `frames` (uint8 [N, H, W, 3], sampled at `frame_indices` of `video`) with all frames
    and with only the frames `retriever` keeps for `question`, plus the retrieval step's own cost.

    video: what is indexed, a path or the frames of the whole video (default `frames` itself, with frame_indices
    0..N-1). The full and retrieved encoder runs alternate, after one warm-up each that counts FLOPs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    adapter, device = get_adapter(model), model.device
    video = frames if video is None else video
    indices = list(range(len(frames))) if frame_indices is None else [int(i) for i in frame_indices]
    bar = tqdm(total=4 * (repeats + 1), desc="profiling retrieval", disable=not progress)
    memories, episodes = [], []

    def index(span):
        with span():
            memories.append(retriever.index_video(video))

    def query(span):
        with span():
            episodes.append(retriever.episodic_video(frames, question, memory=memories[-1], frame_indices=indices))

    bar.set_postfix_str("index the video")
    (index_run,) = _measure([index], repeats, device, bar)
    bar.set_postfix_str("retrieve")
    (query_run,) = _measure([query], repeats, device, bar)
    memory, (kept, kept_indices) = memories[-1], episodes[-1]
    total = memory.num_frames
    full_inputs = build_inputs(processor, [question], [[frames]],
                               metadata=[[frames_metadata(frames, fps, indices, total)]])
    kept, kept_indices = pad_frames(kept, kept_indices.tolist(), model)
    retrieved_inputs = build_inputs(processor, [question], [[kept]],
                                    metadata=[[frames_metadata(kept, fps, kept_indices, total)]])
    full_inputs, retrieved_inputs = ({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                                     for inputs in (full_inputs, retrieved_inputs))

    def encoder(inputs):
        def run(span):
            with span():
                adapter.encode("video", inputs)
        return run

    bar.set_postfix_str("vision encoder, all frames and retrieved")
    full_run, retrieved_run = _measure([encoder(full_inputs), encoder(retrieved_inputs)], repeats, device, bar)
    bar.close()
    tokens = [int((inputs["input_ids"] == adapter.video_token_id).sum()) for inputs in (full_inputs, retrieved_inputs)]
    clip_starts = torch.tensor([start for start, _ in memory.clips])
    retrieved_clips = torch.unique(torch.searchsorted(clip_starts, torch.as_tensor(kept_indices), right=True))
    return RetrievalCosts(
        clips=len(memory.clips), clips_retrieved=len(retrieved_clips), frames_full=len(frames),
        frames_retrieved=len(episodes[-1][1]), visual_tokens_full=tokens[0], visual_tokens_retrieved=tokens[1],
        vision_ms_full=full_run.ms, vision_ms_retrieved=retrieved_run.ms, vision_flops_full=full_run.flops,
        vision_flops_retrieved=retrieved_run.flops, index_ms=index_run.ms, index_flops=index_run.flops,
        query_ms=query_run.ms, query_flops=query_run.flops,
    )


def format_retrieval(costs: RetrievalCosts, top_k: int, embedder: str) -> str:
    """A plain-text table: vision-encoder frames / tokens / time / FLOPs with all frames and with retrieval."""
    rows = [("frames encoded", costs.frames_full, costs.frames_retrieved, "{:.0f}"),
            ("visual tokens", costs.visual_tokens_full, costs.visual_tokens_retrieved, "{:.0f}"),
            ("vision encoder ms", costs.vision_ms_full, costs.vision_ms_retrieved, "{:.1f}"),
            ("vision encoder GFLOPs", costs.vision_flops_full / 1e9, costs.vision_flops_retrieved / 1e9, "{:.3f}")]
    lines = [f"retrieval: top-{top_k} of {costs.clips} event clips (sampled frames kept from {costs.clips_retrieved}), "
             f"embedder {embedder}", f"{'':30} {'all frames':>12} {'retrieved':>12} {'ratio':>8}"]
    for label, a, b, fmt in rows:
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"{label:30} {fmt.format(a):>12} {fmt.format(b):>12} {ratio:>8}")
    lines.append(f"retrieval step: index {costs.index_ms:.1f} ms, {costs.index_flops / 1e9:.3f} GFLOPs "
                 f"(once per video); query {costs.query_ms:.1f} ms, {costs.query_flops / 1e9:.3f} GFLOPs "
                 "(per question)")
    return "\n".join(lines)
