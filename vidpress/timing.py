"""What one pressed prefill costs and keeps: its stages timed (vision encoder, press, LLM prefill with all tokens
and with the kept ones) and the tokens kept per frame."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from vidpress.models import get_adapter
from vidpress.models.report import PressReport
from vidpress.models.sequence import PIXEL_INPUTS


@dataclass
class PrefillTiming:
    """Median milliseconds per stage of one prefill, and the report of what the press kept."""

    vision_ms: float
    press_ms: float
    llm_full_ms: float
    llm_pressed_ms: float
    report: PressReport

    @property
    def llm_speedup(self) -> float:
        return self.llm_full_ms / self.llm_pressed_ms

    @property
    def sequence_ratio(self) -> float:
        before, after = self.report.sequence_length
        return before / after


def median_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in ms over `repeats` runs, after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


@torch.no_grad()
def time_prefill(model, inputs: dict, press, repeats: int = 3) -> PrefillTiming:
    """Time each prefill stage for `inputs` (straight from the processor), with the video encoded once.

    The LLM prefill is timed on exactly what the model receives: all visual tokens, or those the press keeps
    (`logits_to_keep=1`, as generation's prefill computes only the last logits).
    """
    adapter = get_adapter(model)
    inputs = dict(inputs)
    vision_ms = median_ms(lambda: adapter.encode("video", inputs), repeats)
    if press.needs_vision_stats and press.retention < 1.0:  # e.g. VisionZip
        encoded = {"video": adapter.encode_with_vision_stats(inputs, press.vision_layer)}
    else:
        encoded = {"video": adapter.encode("video", inputs)}
    if inputs.get("pixel_values") is not None:
        encoded["image"] = adapter.encode("image", inputs)
    full = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}
    full["mm_encoder_outputs"] = encoded
    llm_full_ms = median_ms(lambda: model(**full, logits_to_keep=1), repeats)
    with press(model) as pressed:
        precomputed = {**full, "mm_encoder_outputs": dict(encoded)}
        press_ms = median_ms(lambda: pressed.prepare(precomputed), repeats)
        kwargs = pressed.prepare(precomputed)
        with pressed.passthrough():  # presses acting inside the LLM run here, as in a real prefill
            llm_pressed_ms = median_ms(lambda: model(**kwargs, logits_to_keep=1), repeats)
    return PrefillTiming(vision_ms, press_ms, llm_full_ms, llm_pressed_ms, pressed.last_report)


def frame_budgets(selection, tokens):
    """LongTensor [T]: tokens the selection keeps per frame (from its keep indices when it records none)."""
    if selection.frame_budgets is not None:
        return selection.frame_budgets
    frames = selection.keep_indices.cpu() // tokens.tokens_per_frame
    return torch.bincount(frames, minlength=tokens.num_frames)


def load_warning() -> str | None:
    """A one-line warning when the machine's 1-minute load average exceeds its core count (timings taken now are
    slowed and spread by other work), else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this OS
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"warning: load average {load:.1f} exceeds the {cores} cores: other work is running, so the timings "
            "are slower and noisier than on an idle machine")
