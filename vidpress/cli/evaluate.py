"""`vidpress eval`: score a pressed model on a video-QA benchmark read from a local folder."""

from __future__ import annotations

from pathlib import Path

from vidpress.cli.common import frame_budgets_option, policy_option, runtime_options


def add_parser(subparsers) -> None:
    from vidpress import presses
    from vidpress.evaluation.benchmarks import BENCHMARKS

    command = subparsers.add_parser(
        "eval",
        help="score a pressed model on a video-QA benchmark read from a local folder",
        description="Answer the questions of MVBench, Video-MME, MLVU, LongVideoBench, OVO-Bench or StreamingBench "
        "(the last two streamed: each question asked at its time through a VideoStream) with a press applied, "
        "using each benchmark's published annotation layout, frame sampling, prompt and answer scoring; print "
        "accuracy overall and per category. Every answer is saved as it is produced, so a rerun "
        "with the same --out resumes. Shard over processes with `accelerate launch -m vidpress eval ...`.",
    )
    command.add_argument("--model", required=True, help="local model directory (from save_pretrained)")
    command.add_argument("--bench", required=True, choices=list(BENCHMARKS), help="benchmark")
    command.add_argument("--data", required=True, help="the benchmark's local folder, in its published layout")
    command.add_argument("--press", default="vidcom2", choices=["none", *presses.available(), *presses.fca_variants()],
                         help="press name (NAME+fca: with --frame-budgets vidcom2), or none for all tokens "
                         "(default: %(default)s)")
    command.add_argument("--retention", type=float, default=0.25,
                         help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    frame_budgets_option(command)
    policy_option(command)
    command.add_argument("--num-frames", type=int, default=16, help="frames sampled per video (default: %(default)s)")
    command.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: %(default)s)")
    command.add_argument("--limit", type=int, help="evaluate only the first N questions")
    command.add_argument("--skip-missing", action="store_true",
                         help="skip questions whose video (or task file) is missing")
    command.add_argument("--out", help="results folder (default: eval-results/<bench>/<model>-<press>-<retention>-"
                         "<frames>f); a rerun with the same settings resumes there, other settings are refused")
    command.add_argument("--overwrite", action="store_true",
                         help="discard the results already in --out and start over")
    group = command.add_argument_group("streaming benchmarks (ovobench, streamingbench)",
                                       "each question is asked at its time through a VideoStream fed the --num-frames "
                                       "frames before it in chunks; --press presses each chunk")
    group.add_argument("--memory-tokens", type=int, help="cap on the visual tokens in the stream's memory "
                       "(default: unbounded)")
    group.add_argument("--memory-policy", help="what leaves the memory at the cap (fifo, uniqueness, stc, recall; "
                       "default: stc with --press stc, else fifo)")
    group.add_argument("--chunk-frames", type=int, help="frames per chunk (default: 4)")
    runtime_options(command, dtype="auto")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=run)


def run(args) -> int:
    from vidpress.evaluation import benchmarks, runner
    from vidpress.loading import build_press, load_model

    benchmark = benchmarks.get_benchmark(args.bench)
    press = None if args.press == "none" else build_press(args.press, args.retention, args.policy, args.frame_budgets)
    for name in ("num_frames", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    stream = _stream_options(args, benchmark, press)
    samples = benchmark.load(Path(args.data), skip_missing=args.skip_missing)[: args.limit]
    if not samples:
        raise ValueError(f"--data {args.data}: no {args.bench} question has its video there")
    shard = runner.Shard(args.device)
    retention = 1.0 if press is None else args.retention
    # one name for a press with VidCom²'s frame budgets, however it was asked for (NAME+fca or --frame-budgets)
    label = f"{press.name}+fca" if press is not None and press.frame_budgets is not None else args.press
    settings = runner.run_settings(
        benchmark=args.bench, model=args.model, data=args.data, press=press, press_name=label,
        policy=args.policy, num_frames=args.num_frames, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
        attn=args.attn, stream=None if stream is None else stream.as_dict())
    out = Path(args.out or f"eval-results/{args.bench}/{Path(args.model).name}-{label}-{retention:g}-"
               f"{args.num_frames}f")
    # Every process checks, before the model loads: a refused resume costs nothing and no process is left waiting.
    runner.check_run_settings(out, settings, overwrite=args.overwrite, write=False)
    model, processor = load_model(args.model, args.attn, shard.device or args.device, args.dtype)
    if shard.is_main:
        print(f"{args.bench}: {len(samples)} questions from {args.data}; press {label}"
              f"{'' if press is None else f' at retention {retention:g}'}; {args.num_frames} frames; "
              f"{shard.world} process(es); results in {out}")
    summary = runner.run(model, processor, benchmark, samples, press, out, settings, shard, num_frames=args.num_frames,
                         max_new_tokens=args.max_new_tokens, progress=not args.quiet, overwrite=args.overwrite,
                         stream=stream)
    if summary is not None:
        print(runner.format_summary(summary))
        print(f"wrote {out / 'results.json'} (per-question answers in {out / 'samples'})")
    return 0


def _stream_options(args, benchmark, press):
    """The stream settings of a streaming benchmark (checked, with the press, before any work); None otherwise, where
    giving them is an error."""
    from vidpress.evaluation.stream_eval import DEFAULT_CHUNK_FRAMES, StreamOptions
    from vidpress.streaming import POLICIES, VideoStream

    given = [f"--{name.replace('_', '-')}" for name in ("memory_tokens", "memory_policy", "chunk_frames")
             if getattr(args, name) is not None]
    if not benchmark.streaming:
        if given:
            raise ValueError(f"{', '.join(given)} only apply to streaming benchmarks; {benchmark.name} is asked "
                             "offline")
        return None
    if args.memory_policy is not None and args.memory_policy not in POLICIES:
        raise ValueError(f"--memory-policy {args.memory_policy!r}: accepted: {', '.join(POLICIES)}")
    if press is not None:
        VideoStream.check_press(press)
    return StreamOptions(args.memory_tokens, args.memory_policy,
                         DEFAULT_CHUNK_FRAMES if args.chunk_frames is None else args.chunk_frames)
