"""`vidpress bench --stream`: the synthetic world's streams through `VideoStream` at several memory budgets, per
memory policy and per-chunk press (the options and the run; `vidpress bench` hands over when --stream is given)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vidpress.cli.common import split_names


def add_arguments(command) -> None:
    """The options only --stream reads (it also reads --model, --presses, --retentions, --limit, --split, --out,
    --threads, --device and --quiet of `vidpress bench`)."""
    from vidpress.evaluation.stream_bench import DEFAULT_CHUNK_FRAMES, DEFAULT_MEMORY_TOKENS, DEFAULT_STREAMS

    group = command.add_argument_group(
        "streaming (--stream)",
        f"--stream feeds the first --limit streams (default {DEFAULT_STREAMS}) of the synthetic world's streaming "
        "family (vidpress.synthetic.stream_world: 16 s streams, questions about the present, the past and counts "
        "so far, asked at their time) to a VideoStream per row and reports accuracy and evidence recall against "
        "the memory budget for every memory policy, next to the offline answer from the whole video; with it, "
        "--presses names per-chunk presses ('none': every token; default none) and --retentions their "
        "retentions (default: each press's own). Runs in one process (--workers and --batch-size do not apply).")
    group.add_argument("--stream", action="store_true", help="benchmark streaming memory (see the group text)")
    group.add_argument("--memory-tokens", help="comma-separated caps on the visual tokens in memory, 'none' for "
                       f"unbounded (default: {','.join(map(str, DEFAULT_MEMORY_TOKENS))},none)")
    group.add_argument("--policies", help="comma-separated memory policies (default: every registered one)")
    group.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES,
                       help="frames per chunk, dividing the streams' 16-frame segments (default: %(default)s, 0.5 s)")
    group.add_argument("--no-offline", action="store_true",
                       help="skip the offline row (each question answered from one forward over the whole video)")


def check_stream_options(args) -> None:
    """The --stream options given without --stream are an error (they would be ignored)."""
    from vidpress.evaluation.stream_bench import DEFAULT_CHUNK_FRAMES

    given = [name for name, value in (("--memory-tokens", args.memory_tokens), ("--policies", args.policies),
                                      ("--no-offline", args.no_offline or None),
                                      ("--chunk-frames", None if args.chunk_frames == DEFAULT_CHUNK_FRAMES else 1))
             if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --stream")


def parse_memory_tokens(text: str) -> list[int | None]:
    """--memory-tokens: comma-separated positive integers or 'none'; an empty list, a bad entry or a repeat is an
    error."""
    parts = split_names(text)
    if not parts:
        raise ValueError(f"--memory-tokens {text!r} names no budget; pass e.g. 32,64,128,none")
    values: list[int | None] = []
    for part in parts:
        if part.lower() in ("none", "unbounded"):
            values.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"--memory-tokens: {part!r} is not a positive integer or 'none'")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"--memory-tokens {text!r} repeats a budget")
    return values


def parse_policies(text: str | None) -> list[str]:
    from vidpress.streaming import POLICIES

    if text is None:
        return list(POLICIES)
    names = split_names(text)
    unknown = [n for n in names if n not in POLICIES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--policies {text!r}: pass distinct names among {', '.join(POLICIES)}")
    return names


def parse_stream_presses(text: str | None) -> list[str | None]:
    """--presses under --stream: 'none' or presses a stream can apply to each chunk (checked by building them)."""
    from vidpress import presses
    from vidpress.streaming import VideoStream

    if text is None:
        return [None]
    names = split_names(text)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--presses {text!r}: pass distinct per-chunk press names or 'none'")
    out: list[str | None] = []
    for name in names:
        if name == "none":
            out.append(None)
            continue
        if name not in presses.available():
            raise ValueError(f"--presses: unknown press {name!r}; available: none, {', '.join(presses.available())}")
        VideoStream.check_press(presses.get(name))
        out.append(name)
    return out


def run(args) -> int:
    import torch

    from vidpress.cli.bench import parse_retentions
    from vidpress.evaluation import stream_bench
    from vidpress.evaluation.testbed import load_bench_model
    from vidpress.evaluation.testbed_results import load_average, run_metadata
    from vidpress.synthetic.reference import REFERENCE_DIR
    from vidpress.synthetic.stream_world import StreamConfig, make_stream_split
    from vidpress.timing import load_warning

    if args.full:
        raise ValueError("--full is the clip bench's grid; with --stream pick the streams with --limit")
    presses = parse_stream_presses(args.presses)
    retentions = parse_retentions(args.retentions) if args.retentions is not None else [None]
    if args.retentions is not None and all(p is None for p in presses):
        raise ValueError("--retentions sets the per-chunk presses' retention; with --stream name them with --presses "
                         "(e.g. --presses none,stc)")
    memory = (parse_memory_tokens(args.memory_tokens) if args.memory_tokens is not None
              else [*stream_bench.DEFAULT_MEMORY_TOKENS, None])
    policies = parse_policies(args.policies)
    limit = stream_bench.DEFAULT_STREAMS if args.limit is None else args.limit
    for option, value in (("limit", limit), ("chunk-frames", args.chunk_frames), ("threads", args.threads)):
        if value <= 0:
            raise ValueError(f"--{option} must be a positive integer; got {value}")
    config = StreamConfig()
    if config.segment_frames % args.chunk_frames or args.chunk_frames % config.world.temporal_patch:
        raise ValueError(f"--chunk-frames must divide the streams' {config.segment_frames}-frame segments and be a "
                         f"multiple of {config.world.temporal_patch} (a temporal token); got {args.chunk_frames}")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such model folder")
    if (Path(args.out) / "results.json").exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds results.json; pass --overwrite to replace it or another "
                         "--out")
    settings = stream_bench.settings_grid(presses, policies, memory, retentions)
    torch.set_num_threads(args.threads)
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr)
    model_dir = Path(args.model) if args.model else REFERENCE_DIR
    meta = run_metadata(model_dir, args.split, limit, None, args.device)
    meta.update(load_average_start=load_average(), chunk_frames=args.chunk_frames,
                settings=[s.label for s in settings], streams=f"the first {limit} {args.split} streams")
    model, processor = load_bench_model(args.model, args.device)
    examples = make_stream_split(args.split, limit, config=config)
    print(f"model: {args.model or 'the shipped reference model'}; the first {limit} {args.split} streams "
          f"({config.frames} frames at {config.fps:g} fps, {len(examples) * 3} questions); chunks of "
          f"{args.chunk_frames} frames; {len(settings)} settings" + ("" if args.no_offline else " + offline"),
          flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_rows = out / "rows.jsonl"  # each row as it finishes, so an interrupted run keeps what it measured
    progress_rows.write_text("")

    def show(row):
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(f"{row['setting']}: accuracy {acc}, evidence recall {row['evidence_recall']:.3f} "
              f"({row['seconds']} s)", flush=True)
        with progress_rows.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    rows, records = stream_bench.run_stream_bench(model, processor, examples, settings, chunk_frames=args.chunk_frames,
                                                  offline=not args.no_offline, progress=not args.quiet, on_row=show)
    meta["load_average_end"] = load_average()
    print(stream_bench.format_stream_table(rows))
    paths = stream_bench.write_stream_results(rows, records, args.out, meta)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
