"""What a press costs next to what it saves.

1. `select` time of every registered press on video features [T, M, D] (default [64, 256, 3584]: 64 frames of a
   7B Qwen2.5-VL). Then side by side, interleaved (`--repeats` rounds, median and min-max): VidCom²'s `select` next
   to the rule computed literally frame by frame (explicit ||x - c||^2 per token, torch.var, F.normalize: the
   computation of the authors' release, re-implemented from the rule), and DivPrune's `select` next to the rule read
   literally (full distance matrix, one pick at a time with a host sync each), on `--divprune-frames` frames.
2. LLM prefill time of a random-weight Qwen2.5-VL of the 7B width (`--layers` decoder layers; the real model
   has 28) on the same features, with all tokens and with VidCom² at `--retention`, next to the token-count ideal.
3. Presses acting inside the LLM (FastV, PDrop) on the same model shape with `--llm-layers` layers and
   `--llm-frames` frames: prefill time at `--retention` (layer-averaged), and their extra cost: the prefill with
   the whole pruning machinery (scoring attention row, cuts, masks) keeping every token, next to the plain prefill.

    python benchmarks/press_overhead.py                       # the documented run (several minutes on 2 CPU cores)
    python benchmarks/press_overhead.py --frames 16 --layers 1  # a quick look
    python benchmarks/press_overhead.py --layers 0 --llm-layers 0 --presses vidcom2 fastvid divprune --repeats 5
                                      # the side-by-side of docs/benchmarks.md ("Press speed on the serving path")
    python benchmarks/press_overhead.py --frames 16 --layers 0 --llm-layers 0 --json docs/press_overhead.json
                                      # part 1 only, saved for the README's press guide (scripts/press_guide.py)

A press that needs a trained policy (`Press.needs_policy`) is not timed here (its policy is built for one model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the per-frame reference loop lives there

from reference import divprune_loop, vidcom2_loop  # noqa: E402

from vidpress import DivPrunePress, VidCom2Press, VideoTokens, presses  # noqa: E402  (before transformers: torchvision shim)
from vidpress.presses import FastVPress, PDropPress  # noqa: E402
from vidpress.timing import median_ms, time_prefill  # noqa: E402

# isort: split
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.modeling_outputs import BaseModelOutputWithPooling  # noqa: E402

VIDEO_TOKEN, TEXT_TOKEN = 3, 4


def qwen25vl_7b_width(layers: int) -> Qwen2_5_VLForConditionalGeneration:
    """Random-weight Qwen2.5-VL with the 7B text shape (width 3584, 28 heads / 4 KV heads, MLP 18944), `layers` deep.

    The vocabulary is cut to 1024 entries: prefill computes only the last token's logits, so it does not matter.
    """
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=1024, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=3584),
        video_token_id=VIDEO_TOKEN, image_token_id=5, vision_start_token_id=6, vision_end_token_id=7,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def prefill_inputs(features: torch.Tensor, text_tokens: int = 64) -> dict:
    """Model inputs holding one video of features [T, M, D] (2x2-merged 32x32 patch grid per frame) plus text."""
    T, M, _ = features.shape
    side = int(M**0.5)
    half = text_tokens // 2
    ids = torch.tensor([[TEXT_TOKEN] * half + [VIDEO_TOKEN] * (T * M) + [TEXT_TOKEN] * half])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == VIDEO_TOKEN).int() * 2,
        "video_grid_thw": torch.tensor([[T, 2 * side, 2 * side]]),
        "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(features.reshape(T * M, -1),))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--tokens-per-frame", type=int, default=256)
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--layers", type=int, default=1, help="decoder layers of the 7B-width LLM (0 skips part 2)")
    parser.add_argument("--llm-layers", type=int, default=4, help="layers for part 3 (0 skips it)")
    parser.add_argument("--llm-frames", type=int, default=8, help="frames for part 3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presses", nargs="+", help="time only these presses in part 1 (default: every one)")
    parser.add_argument("--divprune-frames", type=int, default=8,
                        help="frames for DivPrune next to its literal loop (the loop is quadratic in the picks)")
    parser.add_argument("--json", help="write part 1 (select ms per press, the setup, the load average) to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    T, M, D = args.frames, args.tokens_per_frame, args.width
    features = torch.randn(T, M, D)
    tokens = VideoTokens(features, (T, int(M**0.5), M // int(M**0.5)))
    print(f"features [{T}, {M}, {D}], retention {args.retention}, torch threads {torch.get_num_threads()}")

    print("\n1. select time per press acting before the LLM (median ms)")
    select_ms, skipped = {}, {}
    load_start = os.getloadavg()[0]
    for name in args.presses or presses.available():
        cls = presses.PRESSES[presses.press_key(name)]
        if cls.acts_in_llm:
            continue
        if cls.needs_policy:
            skipped[name] = "needs a trained policy for one model"
            print(f"   {name:10s} not timed: {skipped[name]}")
            continue
        try:
            press = presses.get(name, retention=args.retention)
            if cls.needs_vision_stats:  # stand-in encoder statistics of the real shapes
                tokens.side_features = {"vision_attention": torch.rand(T, M), "vision_keys": torch.randn(T, M, 80)}
            select_ms[name] = median_ms(lambda: press.select(tokens), args.repeats)
        except (ValueError, TypeError, NotImplementedError) as error:  # a press this harness cannot feed: say so
            skipped[name] = str(error)
            print(f"   {name:10s} not timed: {error}")
            continue
        print(f"   {name:10s} {select_ms[name]:9.1f} ms  (effective retention {press.select(tokens).retention:.3f})")
    side_by_side(features, tokens, args)

    if args.json:
        Path(args.json).write_text(json.dumps({
            "setup": {"features": [T, M, D], "retention": args.retention, "repeats": args.repeats,
                      "threads": torch.get_num_threads(), "cores": os.cpu_count()},
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "select_ms": select_ms, "not_timed": skipped}, indent=1) + "\n")
        print(f"   wrote {args.json}")
    if args.layers > 0:
        llm_prefill(features, args)
    if args.llm_layers > 0:
        in_llm_presses(args)


def side_by_side(features: torch.Tensor, tokens: VideoTokens, args) -> None:
    """vidpress's VidCom² and DivPrune next to the literal computations of their rules, interleaved, equal picks."""
    R = args.retention
    small = features[: args.divprune_frames]
    small_tokens = VideoTokens(small, (small.shape[0],) + tuple(tokens.grid[1:]))
    vidcom2, divprune = VidCom2Press(retention=R), DivPrunePress(retention=R)
    assert vidcom2.select(tokens).keep_indices.tolist() == vidcom2_loop(features, R), "VidCom2 differs from its loop"
    budget = divprune.select(small_tokens).keep_indices.numel()
    literal = sorted(divprune_loop(small.reshape(-1, small.shape[-1]), budget))
    assert divprune.select(small_tokens).keep_indices.tolist() == literal, "DivPrune differs from its loop"
    pairs = {
        f"vidcom2 [{', '.join(map(str, features.shape))}]": (lambda: vidcom2.select(tokens),
                                                              lambda: vidcom2_loop(features, R)),
        f"divprune [{', '.join(map(str, small.shape))}]": (
            lambda: divprune.select(small_tokens),
            lambda: divprune_loop(small.reshape(-1, small.shape[-1]), budget)),
    }
    times = {(name, side): [] for name in pairs for side in (0, 1)}
    load = os.getloadavg()
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, fns in pairs.items():
            for side, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                times[name, side].append((time.perf_counter() - start) * 1000)
    print(f"\n   side by side, interleaved, {args.repeats} rounds (median ms [min, max]), same kept sets; "
          f"load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name in pairs:
        ours, literal = (times[name, side][1:] for side in (0, 1))
        ratio = statistics.median(ours) / statistics.median(literal)
        print(f"   {name:28s} vidpress {_spread(ours)}  literal {_spread(literal)}  -> {ratio:.2f}x the time")


def _spread(ms: list[float]) -> str:
    return f"{statistics.median(ms):9.1f} [{min(ms):.1f}, {max(ms):.1f}]"


def llm_prefill(features: torch.Tensor, args) -> None:
    print(f"\n2. LLM prefill, random-weight Qwen2.5-VL 7B width, {args.layers} decoder layer(s), float32")
    model = qwen25vl_7b_width(args.layers)
    timing = time_prefill(model, prefill_inputs(features), VidCom2Press(retention=args.retention), repeats=args.repeats)
    before, after = timing.report.sequence_length
    print(f"   sequence {before} -> {after} tokens (ideal speed-up by token count {timing.sequence_ratio:.2f}x)")
    print(f"   LLM prefill all tokens {timing.llm_full_ms:10.1f} ms")
    print(f"   LLM prefill VidCom2    {timing.llm_pressed_ms:10.1f} ms -> {timing.llm_speedup:.2f}x "
          f"({timing.llm_speedup / timing.sequence_ratio:.2f} of the token-count ideal)")
    print(f"   press step (select + slicing) {timing.press_ms:.1f} ms = "
          f"{100 * timing.press_ms / (timing.llm_full_ms - timing.llm_pressed_ms):.2f}% of the prefill time it saves "
          f"with {args.layers} layer(s); "
          f"~{100 * timing.press_ms / (28 / args.layers * (timing.llm_full_ms - timing.llm_pressed_ms)):.3f}%"
          " at the full 28 layers")


@dataclass
class KeepEverythingAfter(FastVPress):
    """FastV's machinery (scoring row, cut, re-pad, masks) with nothing dropped: its cost alone."""

    def schedule(self, num_layers):
        return [(self.layer, 1.0)]


def in_llm_presses(args) -> None:
    T = args.llm_frames
    print(f"\n3. presses inside the LLM: 7B width, {args.llm_layers} layers, "
          f"{T} frames x {args.tokens_per_frame} tokens")
    model = qwen25vl_7b_width(args.llm_layers)
    inputs = prefill_inputs(torch.randn(T, args.tokens_per_frame, args.width))
    overhead = time_prefill(model, inputs, KeepEverythingAfter(retention=0.5, layer=2), repeats=args.repeats)
    print(f"   plain prefill {overhead.llm_full_ms:9.1f} ms; with FastV's machinery keeping every token "
          f"{overhead.llm_pressed_ms:9.1f} ms -> extra cost {overhead.llm_pressed_ms - overhead.llm_full_ms:+.1f} ms "
          f"({100 * (overhead.llm_pressed_ms / overhead.llm_full_ms - 1):+.1f}%)")
    for name, press in (("fastv", FastVPress(retention=args.retention)),
                        ("pdrop", PDropPress(retention=args.retention))):
        try:
            timing = time_prefill(model, inputs, press, repeats=args.repeats)
        except ValueError as error:  # e.g. a retention below the press's floor on this depth
            print(f"   {name}: {error}")
            continue
        print(f"   {name:6s} requested {args.retention:.2f}, effective {timing.report.retention:.3f}: prefill "
              f"{timing.llm_pressed_ms:9.1f} ms -> {timing.llm_speedup:.2f}x (ideal by layer-averaged tokens "
              f"{1 / (1 - (1 - timing.report.retention) * _visual_share(timing)):.2f}x)")


def _visual_share(timing) -> float:
    """Share of the full sequence that is video tokens (for the ideal speed-up of in-LLM presses)."""
    return timing.report.visual_tokens_before / timing.report.sequence_length[0]


if __name__ == "__main__":
    main()
