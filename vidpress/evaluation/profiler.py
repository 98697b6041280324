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
import dataclasses
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
from vidpress.streaming import VideoStream


@dataclass
class StageCosts:
    """One side ("full" or "pressed") of a profile.

    *_ms: median milliseconds (decode: per generated token, after the first); press_ms is 0 for the full model.
    generate_ms: one `generate` call of `decode_tokens` new tokens from the encoded video, end to end (press,
    prefill and decoding: the LLM generation latency); a single run, so noisier than the medians.
    visual_tokens: video tokens the LLM receives; sequence_length: prompt tokens the LLM prefills.
    peak_mem_mb: the largest of the stage peaks (vision encoder, press, LLM prefill) above what was in use before.
    flops: vision + press + LLM prefill FLOPs; the *_flops fields split them.
    """

    vision_ms: float
    press_ms: float
    llm_prefill_ms: float
    decode_ms_per_token: float
    generate_ms: float
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


def _decode_ms_per_token(generate, tokens: int, device: torch.device) -> tuple[float, float]:
    """(median ms between consecutive generation steps, ms of the whole call) over `tokens` new tokens (EOS
    suppressed until then)."""
    clock = _StepClock(device)
    _sync(device)
    start = time.perf_counter()
    generate(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
             logits_processor=LogitsProcessorList([clock]))
    _sync(device)
    total = (time.perf_counter() - start) * 1000
    gaps = [(b - a) * 1000 for a, b in zip(clock.stamps, clock.stamps[1:])]
    return statistics.median(gaps), total


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

    def side(press_costs: _Run | None, prefill: _Run, decode: tuple[float, float], tokens: int,
             length: int) -> StageCosts:
        press_ms, press_flops = (press_costs.ms, press_costs.flops) if press_costs else (0.0, 0)
        peaks = [vision_run.peak_mb, prefill.peak_mb] + ([press_costs.peak_mb] if press_costs else [])
        return StageCosts(
            vision_ms=vision_run.ms, press_ms=press_ms, llm_prefill_ms=prefill.ms, decode_ms_per_token=decode[0],
            generate_ms=decode[1],
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
        ("generate ms (press+prefill+decode)", "generate_ms", "{:.0f}"),
        ("peak memory MB", "peak_mem_mb", "{:.0f}"), ("GFLOPs (vision+press+prefill)", "flops", "{:.1f}"),
        ("  LLM prefill GFLOPs", "llm_prefill_flops", "{:.1f}"),
    ]
    lines = [f"{'':36} {'full':>12} {'pressed':>12} {'ratio':>8}"]
    for label, key, fmt in rows:
        a, b = full[key], pressed[key]
        if key.endswith("flops"):
            a, b = a / 1e9, b / 1e9
        cells = ["-" if v is None else fmt.format(v) for v in (a, b)]
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"{label:36} {cells[0]:>12} {cells[1]:>12} {ratio:>8}")
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


@dataclass
class _Retrieved:
    """The shared first half of the retrieval profiles: the retrieval step's runs and both videos' inputs."""

    index: _Run
    query: _Run
    clips: int
    clips_retrieved: int
    frames_retrieved: int
    full_inputs: dict
    retrieved_inputs: dict


def _retrieve(model, processor, retriever, frames, question, video, frame_indices, fps, repeats, bar) -> _Retrieved:
    """Time indexing `video` and retrieving the episodic video for `question`; build the processor inputs of all
    `frames` and of the retrieved ones (on the model's device)."""
    device = model.device
    video = frames if video is None else video
    indices = list(range(len(frames))) if frame_indices is None else [int(i) for i in frame_indices]
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
    clip_starts = torch.tensor([start for start, _ in memory.clips])
    retrieved_clips = torch.unique(torch.searchsorted(clip_starts, torch.as_tensor(kept_indices), right=True))
    frames_retrieved = len(kept_indices)
    kept, kept_indices = pad_frames(kept, kept_indices.tolist(), model)
    retrieved_inputs = build_inputs(processor, [question], [[kept]],
                                    metadata=[[frames_metadata(kept, fps, kept_indices, total)]])
    full_inputs, retrieved_inputs = ({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                                     for inputs in (full_inputs, retrieved_inputs))
    return _Retrieved(index_run, query_run, len(memory.clips), len(retrieved_clips), frames_retrieved, full_inputs,
                      retrieved_inputs)


def _encoder(adapter, inputs):
    def run(span):
        with span():
            adapter.encode("video", inputs)
    return run


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
    bar = tqdm(total=4 * (repeats + 1), desc="profiling retrieval", disable=not progress)
    got = _retrieve(model, processor, retriever, frames, question, video, frame_indices, fps, repeats, bar)
    bar.set_postfix_str("vision encoder, all frames and retrieved")
    full_run, retrieved_run = _measure([_encoder(adapter, got.full_inputs), _encoder(adapter, got.retrieved_inputs)],
                                       repeats, device, bar)
    bar.close()
    tokens = [int((inputs["input_ids"] == adapter.video_token_id).sum())
              for inputs in (got.full_inputs, got.retrieved_inputs)]
    return RetrievalCosts(
        clips=got.clips, clips_retrieved=got.clips_retrieved, frames_full=len(frames),
        frames_retrieved=got.frames_retrieved, visual_tokens_full=tokens[0], visual_tokens_retrieved=tokens[1],
        vision_ms_full=full_run.ms, vision_ms_retrieved=retrieved_run.ms, vision_flops_full=full_run.flops,
        vision_flops_retrieved=retrieved_run.flops, index_ms=got.index.ms, index_flops=got.index.flops,
        query_ms=got.query.ms, query_flops=got.query.flops,
    )


@dataclass
class PipelineSide:
    """One side of an end-to-end profile: "full" (every frame encoded, every token prefilled) or "retrieved" (the
    frames of the top-k clips encoded, then pressed, then prefilled).

    *_ms: median ms per question (retrieve_ms: embedding the question and searching the index; 0 on the full
    side); total_ms: their sum, the time to the first answer token without decoding (the index is paid once per
    video, reported apart). *_flops: FLOPs of one run. *_peak_mem_mb: peak memory above what was in use before the
    stage (CUDA max allocated, or CPU RSS growth); peak_mem_mb: the largest of them.
    """

    frames_encoded: int
    visual_tokens_encoded: int
    visual_tokens: int
    sequence_length: int
    retrieve_ms: float
    vision_ms: float
    press_ms: float
    llm_prefill_ms: float
    total_ms: float
    retrieve_flops: int
    vision_flops: int
    press_flops: int
    llm_prefill_flops: int
    vision_peak_mem_mb: float | None
    press_peak_mem_mb: float | None
    llm_peak_mem_mb: float | None
    peak_mem_mb: float | None


@dataclass
class PipelineCosts:
    """All frames and tokens against retrieve-then-press, for one video and question.

    clips / clips_retrieved: event clips in the index / holding the retrieved frames; index_ms / index_flops:
    segmenting, embedding and indexing the video (once per video); prefill_speedups and total_speedups: full /
    retrieved LLM prefill time and total time of each interleaved repeat.
    """

    full: PipelineSide
    retrieved: PipelineSide
    clips: int
    clips_retrieved: int
    index_ms: float
    index_flops: int
    index_peak_mem_mb: float | None
    prefill_speedups: list[float]

    def to_json(self, setup: dict) -> dict:
        return {**asdict(self), "setup": setup}


def _peak(*values):
    return None if None in values else max(values)


@torch.no_grad()
def profile_pipeline(model, processor, retriever, press, frames, question: str, retention: float, video=None,
                     frame_indices=None, fps: float = 2.0, repeats: int = 3, progress: bool = True) -> PipelineCosts:
    """MARC's retrieve-then-compress against the unpressed model, stage by stage, for one video and question.

    Full side: the vision encoder on every frame of `frames` (uint8 [N, H, W, 3]), then the LLM prefill of every
    visual token. Retrieved side: `retriever` picks the frames of the top-k event clips for `question` BEFORE the
    vision encoder (arXiv 2510.07915's Visual Memory Retriever), the encoder runs on those frames only, `press`
    compresses their tokens to `retention` of the FULL video's visual tokens (K = round(retention * N_full); the
    press is rebuilt at retention K / N_retrieved, capped at 1), and the LLM prefills the rest. The encoder runs
    of both sides alternate, and so do the prefills; each stage gets one warm-up run that counts FLOPs.
    video / frame_indices / fps: as in `profile_retrieval`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    if not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1] (a fraction of the full video's visual tokens); got "
                         f"{retention}")
    if press.acts_in_llm:
        raise ValueError(f"{press.name} acts inside the LLM; the pipeline presses the retrieved video's tokens before "
                         "it (use a press acting before the LLM, e.g. marc)")
    adapter, device = get_adapter(model), model.device
    bar = tqdm(total=8 * (repeats + 1), desc="profiling retrieve-then-press", disable=not progress)
    got = _retrieve(model, processor, retriever, frames, question, video, frame_indices, fps, repeats, bar)
    full_inputs, retrieved_inputs = got.full_inputs, got.retrieved_inputs
    tokens_full, tokens_retrieved = (int((inputs["input_ids"] == adapter.video_token_id).sum())
                                     for inputs in (full_inputs, retrieved_inputs))
    press = dataclasses.replace(press, retention=min(1.0, round(retention * tokens_full) / tokens_retrieved))

    bar.set_postfix_str("vision encoder, all frames and retrieved")
    vision_full, vision_retrieved = _measure([_encoder(adapter, full_inputs), _encoder(adapter, retrieved_inputs)],
                                             repeats, device, bar)

    def precomputed(inputs) -> dict:
        kwargs = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}
        kwargs["mm_encoder_outputs"] = {"video": adapter.encode("video", inputs)}
        return kwargs

    full, retrieved = precomputed(full_inputs), precomputed(retrieved_inputs)

    def fresh() -> dict:
        return {**retrieved, "mm_encoder_outputs": dict(retrieved["mm_encoder_outputs"])}

    reports = []

    def press_step(span):
        with press(model) as pressed, span():
            pressed.prepare(fresh())

    def prefill_full(span):
        with span():
            model(**full, logits_to_keep=1)

    def prefill_pressed(span):
        with press(model) as pressed:
            kwargs = pressed.prepare(fresh())
            with span(), pressed.passthrough():
                model(**kwargs, logits_to_keep=1)
            reports.append(pressed.last_report)

    bar.set_postfix_str("press")
    (press_run,) = _measure([press_step], repeats, device, bar)
    bar.set_postfix_str("LLM prefill, all tokens and retrieved + pressed")
    prefill_full_run, prefill_pressed_run = _measure([prefill_full, prefill_pressed], repeats, device, bar)
    bar.close()
    report = reports[-1]
    full_side = PipelineSide(
        frames_encoded=len(frames), visual_tokens_encoded=tokens_full, visual_tokens=tokens_full,
        sequence_length=int(full_inputs["input_ids"].shape[1]), retrieve_ms=0.0, vision_ms=vision_full.ms,
        press_ms=0.0, llm_prefill_ms=prefill_full_run.ms, total_ms=vision_full.ms + prefill_full_run.ms,
        retrieve_flops=0, vision_flops=vision_full.flops, press_flops=0, llm_prefill_flops=prefill_full_run.flops,
        vision_peak_mem_mb=vision_full.peak_mb, press_peak_mem_mb=None, llm_peak_mem_mb=prefill_full_run.peak_mb,
        peak_mem_mb=_peak(vision_full.peak_mb, prefill_full_run.peak_mb),
    )
    retrieved_side = PipelineSide(
        frames_encoded=got.frames_retrieved, visual_tokens_encoded=tokens_retrieved,
        visual_tokens=report.visual_tokens_after, sequence_length=report.sequence_length[1],
        retrieve_ms=got.query.ms, vision_ms=vision_retrieved.ms, press_ms=press_run.ms,
        llm_prefill_ms=prefill_pressed_run.ms,
        total_ms=got.query.ms + vision_retrieved.ms + press_run.ms + prefill_pressed_run.ms,
        retrieve_flops=got.query.flops, vision_flops=vision_retrieved.flops, press_flops=press_run.flops,
        llm_prefill_flops=prefill_pressed_run.flops, vision_peak_mem_mb=vision_retrieved.peak_mb,
        press_peak_mem_mb=press_run.peak_mb, llm_peak_mem_mb=prefill_pressed_run.peak_mb,
        peak_mem_mb=_peak(got.query.peak_mb, vision_retrieved.peak_mb, press_run.peak_mb, prefill_pressed_run.peak_mb),
    )
    return PipelineCosts(
        full=full_side, retrieved=retrieved_side, clips=got.clips, clips_retrieved=got.clips_retrieved,
        index_ms=got.index.ms, index_flops=got.index.flops, index_peak_mem_mb=got.index.peak_mb,
        prefill_speedups=[a / b for a, b in zip(prefill_full_run.times, prefill_pressed_run.times)],
    )


def format_pipeline(costs: PipelineCosts, top_k: int, press: str) -> str:
    """A plain-text table: each stage with all frames and tokens, and with retrieval + `press`."""
    full, retrieved = asdict(costs.full), asdict(costs.retrieved)
    rows = [("frames encoded", "frames_encoded", "{:.0f}"),
            ("visual tokens encoded", "visual_tokens_encoded", "{:.0f}"),
            ("visual tokens to the LLM", "visual_tokens", "{:.0f}"), ("sequence length", "sequence_length", "{:.0f}"),
            ("retrieve ms (per question)", "retrieve_ms", "{:.1f}"), ("vision encoder ms", "vision_ms", "{:.1f}"),
            ("press ms", "press_ms", "{:.1f}"), ("LLM prefill ms", "llm_prefill_ms", "{:.1f}"),
            ("total ms (no decoding)", "total_ms", "{:.1f}"), ("vision encoder GFLOPs", "vision_flops", "{:.2f}"),
            ("LLM prefill GFLOPs", "llm_prefill_flops", "{:.2f}"),
            ("vision peak memory MB", "vision_peak_mem_mb", "{:.0f}"),
            ("LLM prefill peak memory MB", "llm_peak_mem_mb", "{:.0f}"), ("peak memory MB", "peak_mem_mb", "{:.0f}")]
    lines = [f"retrieve-then-press: top-{top_k} of {costs.clips} event clips ({costs.clips_retrieved} hold the "
             f"retrieved frames), then {press}",
             f"{'':30} {'all frames':>12} {'retrieved':>12} {'change':>8}"]
    for label, key, fmt in rows:
        a, b = full[key], retrieved[key]
        if key.endswith("flops"):
            a, b = a / 1e9, b / 1e9
        cells = ["-" if v is None else fmt.format(v) for v in (a, b)]
        change = f"{(b - a) / a:+.1%}" if a and b is not None else "-"
        lines.append(f"{label:30} {cells[0]:>12} {cells[1]:>12} {change:>8}")
    lines.append(f"index the video (once per video): {costs.index_ms:.1f} ms, {costs.index_flops / 1e9:.3f} GFLOPs")
    return "\n".join(lines)


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


# ------------------------------------------------------------------------------------------------- streaming


@dataclass
class StreamCosts:
    """What one chunk of a `VideoStream` costs, stage by stage, and what the stream holds afterwards.

    stage_ms: per stage, the wall ms of every timed chunk ("encode": the vision encoder, STC's cache included;
    "press": selecting and cutting the chunk's tokens; "evict": the memory policy, 0 when nothing leaves;
    "prefill": appending the kept tokens to the KV cache) and of every question ("ask": prefilling the question and
    greedy decoding up to `answer_tokens`, then cropping the cache back); a warm-up chunk and question before them
    are not counted. visual_tokens_per_chunk / kept_tokens_per_chunk: encoded / appended per chunk (median).
    kv_cache_mb: the cache's key and value tensors at the end, over the model's `layers` decoder layers
    (kv_cache_mb_per_layer: one layer's share; the cache grows linearly with depth).
    """

    chunks: int
    chunk_frames: int
    answer_tokens: int
    memory_tokens: int | None
    visual_tokens_per_chunk: int
    kept_tokens_per_chunk: int
    stage_ms: dict[str, list[float]]
    cache_tokens: int
    visual_tokens_in_memory: int
    kv_cache_mb: float
    kv_cache_mb_per_layer: float
    layers: int

    def median(self, stage: str) -> float:
        return statistics.median(self.stage_ms[stage])

    @property
    def chunk_ms(self) -> float:
        """Median chunk time: the sum of the per-stage medians of a chunk (encode + press + evict + prefill)."""
        return sum(self.median(stage) for stage in ("encode", "press", "evict", "prefill"))

    def to_json(self, setup: dict) -> dict:
        medians = {stage: self.median(stage) for stage in self.stage_ms}
        return {**asdict(self), "stage_ms_median": medians, "chunk_ms": self.chunk_ms, "setup": setup}


@torch.no_grad()
def profile_stream(model, processor, press, frames, chunk_frames: int = 2, memory_tokens: int | None = None,
                   question: str = "What happened so far?", answer_tokens: int = 4, fps: float = 2.0,
                   progress: bool = True) -> StreamCosts:
    """Stream `frames` (uint8 [N, H, W, 3], at `fps`) through a `VideoStream(model, processor, press,
    memory_tokens)` in chunks of `chunk_frames`, asking `question` after each chunk; time each stage.

    The first chunk and question first run once as a warm-up, then the stream is reset, so every timed chunk
    finds the model warm; frames left over after the last whole chunk are not streamed.
    """
    if chunk_frames < 1 or len(frames) < chunk_frames:
        raise ValueError(f"profile_stream needs chunk_frames >= 1 and at least one chunk of frames; got "
                         f"{len(frames)} frames in chunks of {chunk_frames}")
    if answer_tokens < 1:
        raise ValueError(f"answer_tokens must be at least 1; got {answer_tokens}")
    stream = VideoStream(model, processor, press=press, memory_tokens=memory_tokens)
    starts = list(range(0, len(frames) - chunk_frames + 1, chunk_frames))
    bar = tqdm(total=len(starts) + 1, desc="profiling a stream", disable=not progress)
    seconds = [i / fps for i in range(len(frames))]
    stream.append(frames[:chunk_frames], seconds[:chunk_frames])  # warm-up
    stream.ask(question, max_new_tokens=answer_tokens)
    stream.reset()
    bar.update()
    encoded, kept = [], []
    for start in starts:
        seen = stream.stats()["visual_tokens_seen"]
        kept.append(stream.append(frames[start:start + chunk_frames], seconds[start:start + chunk_frames]))
        encoded.append(stream.stats()["visual_tokens_seen"] - seen)
        stream.ask(question, max_new_tokens=answer_tokens)
        bar.update()
    bar.close()
    stats = stream.stats()
    stage_ms = {stage: list(stream.stage_times(stage)) for stage in ("encode", "press", "evict", "prefill", "ask")}
    layers = len(stream.cache.layers)
    kv_bytes = sum(t.numel() * t.element_size() for layer in stream.cache.layers for t in (layer.keys, layer.values))
    return StreamCosts(
        chunks=len(starts), chunk_frames=chunk_frames, answer_tokens=answer_tokens, memory_tokens=memory_tokens,
        visual_tokens_per_chunk=int(statistics.median(encoded)), kept_tokens_per_chunk=int(statistics.median(kept)),
        stage_ms=stage_ms, cache_tokens=stats["cache_tokens"],
        visual_tokens_in_memory=stats["visual_tokens_in_memory"], kv_cache_mb=kv_bytes / 2**20,
        kv_cache_mb_per_layer=kv_bytes / 2**20 / layers, layers=layers,
    )


def format_stream(costs: StreamCosts, press: str) -> str:
    """A plain-text table: median and range of each stage's ms per chunk, and the cache at the end."""
    lines = [f"stream: {costs.chunks} timed chunks of {costs.chunk_frames} frames, press {press}, memory_tokens "
             f"{costs.memory_tokens}; {costs.visual_tokens_per_chunk} visual tokens encoded and "
             f"{costs.kept_tokens_per_chunk} appended per chunk",
             f"{'stage':36} {'median ms':>10} {'min':>10} {'max':>10}"]
    labels = {"encode": "encode (vision encoder)", "press": "press", "evict": "evict (memory policy)",
              "prefill": "prefill-append", "ask": f"ask (question + {costs.answer_tokens} tokens)"}
    for stage, label in labels.items():
        times = costs.stage_ms[stage]
        lines.append(f"{label:36} {costs.median(stage):>10.1f} {min(times):>10.1f} {max(times):>10.1f}")
    lines.append(f"chunk (sum of the stage medians): {costs.chunk_ms:.1f} ms; cache at the end: "
                 f"{costs.cache_tokens} tokens ({costs.visual_tokens_in_memory} visual), {costs.kv_cache_mb:.1f} MB "
                 f"of keys and values over {costs.layers} layers ({costs.kv_cache_mb_per_layer:.2f} MB per layer)")
    return "\n".join(lines)
