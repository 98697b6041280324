"""`vidpress bench`: compare presses on the synthetic video-QA test split (the main job)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vidpress.cli import bench_stream
from vidpress.cli.common import default_device, split_names


def add_parser(subparsers) -> None:
    from vidpress.evaluation.testbed import (
        DEFAULT_RETENTIONS,
        FULL_EXAMPLES,
        LONG_EXAMPLES,
        LONG_RETENTIONS,
        QUICK_PER_FAMILY,
        QUICK_RETENTIONS,
        QUICK_SEED,
    )

    def listed(values):
        return ",".join(f"{r:g}" for r in values)

    command = subparsers.add_parser(
        "bench",
        help="compare presses on the synthetic video-QA test split (the main job)",
        description=f"Run every press at {listed(QUICK_RETENTIONS)} on a stratified subset of the synthetic test "
        f"split ({QUICK_PER_FAMILY} examples per question family, seed {QUICK_SEED}; about 2 minutes on 2 idle "
        f"cores), or with --full at {listed(DEFAULT_RETENTIONS)} on the first {FULL_EXAMPLES} test examples, with "
        "the shipped reference model (or --model). Prints accuracy with its 95% interval and a paired test "
        "against all tokens, per-family accuracy, evidence recall, kept visual tokens, LLM prefill time and peak "
        "memory. Rows are written to --out as they finish (rows.jsonl, predictions.jsonl); Ctrl-C keeps them and "
        "the same command resumes. At the end: results.json, results.csv, accuracy.png and pareto.png.",
    )
    command.add_argument("--presses", help="comma-separated press names (default: all registered presses and the "
                         "learned rows cacovid, marc-cgrpo; with --model, the presses that need no trained checkpoint)")
    command.add_argument("--retentions", help="comma-separated retentions in (0, 1] (default: "
                         f"{listed(QUICK_RETENTIONS)}; with --full: {listed(DEFAULT_RETENTIONS)})")
    command.add_argument("--full", action="store_true", help=f"the full grid: the first {FULL_EXAMPLES} test "
                         f"examples at {listed(DEFAULT_RETENTIONS)} (about 7 minutes on 2 idle cores)")
    command.add_argument("--model", help="local model directory (default: the shipped reference model)")
    command.add_argument("--family", choices=["long"], help="bench another family set instead of the six short "
                         f"families: 'long' runs the first {LONG_EXAMPLES} long-family test examples (64-256 frames, "
                         f"one asked event among many) at {listed(LONG_RETENTIONS)} (default presses: all but the "
                         "students trained on the six families)")
    command.add_argument("--limit", type=int, help="use the first N examples of the split instead of the stratified "
                         f"subset (default: the subset; with --full: {FULL_EXAMPLES})")
    command.add_argument("--seed", type=int, default=QUICK_SEED,
                         help="seed drawing the stratified subset (default: %(default)s)")
    command.add_argument("--split", default="test", choices=["train", "val", "test"],
                         help="synthetic split (default: test)")
    command.add_argument("--out", default="bench-results", help="output folder (default: %(default)s); a run "
                         "interrupted there is resumed by the same command; finished results are kept unless "
                         "--overwrite")
    command.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    command.add_argument("--batch-size", type=int, default=32, help="examples per forward (default: %(default)s)")
    command.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                         help="processes running rows side by side, one torch thread each (default: %(default)s, "
                         "up to 2 cores)")
    command.add_argument("--threads", type=int, default=1, help="torch intra-op threads, with --workers 1 (default: "
                         "%(default)s: the reference model's ops are too small to gain from more, and waiting threads "
                         "stall under load)")
    command.add_argument("--device", default=default_device(), help="torch device (default: %(default)s)")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    bench_stream.add_arguments(command)
    command.set_defaults(run=run)


def parse_retentions(text: str) -> list[float]:
    """--retentions: comma-separated numbers in (0, 1]; an empty list or a non-number is an error."""
    from vidpress.types import check_retention

    parts = split_names(text)
    if not parts:
        raise ValueError(f"--retentions {text!r} names no retention; pass comma-separated numbers in (0, 1], "
                         "e.g. 0.5,0.25")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--retentions: {part!r} is not a number; pass comma-separated numbers in (0, 1], "
                             "e.g. 0.5,0.25") from None
        try:
            values.append(check_retention(value))
        except ValueError as error:
            raise ValueError(f"--retentions: {error}") from None
    if len(set(values)) != len(values):
        raise ValueError(f"--retentions {text!r} repeats a retention")
    return values


def parse_presses(text: str) -> list[str]:
    """--presses: comma-separated bench names; an empty list, an unknown name or a repeat is an error."""
    from vidpress.evaluation.testbed import bench_names, check_names

    names = split_names(text)
    if not names:
        raise ValueError(f"--presses {text!r} names no press; available presses: {', '.join(bench_names())}")
    check_names(names)
    if len(set(names)) != len(names):
        raise ValueError(f"--presses {text!r} repeats a press")
    return names


def run(args) -> int:
    from vidpress.evaluation import testbed

    if args.stream:
        if args.family is not None:
            raise ValueError("--stream runs the streaming family; --family picks a family of the offline bench")
        return bench_stream.run(args)
    bench_stream.check_stream_options(args)
    if args.family is not None and args.full:
        raise ValueError("--full is the six families' grid; with --family, pick examples with --limit and retentions "
                         "with --retentions")
    if args.presses is not None:
        names = parse_presses(args.presses)
    else:  # the learned rows' checkpoints are trained for the shipped (family) reference model only
        names = testbed.checkpoint_free_names() if args.model else testbed.default_names(args.family)
    if args.retentions is not None:
        retentions = parse_retentions(args.retentions)
    elif args.family is not None:
        retentions = list(testbed.LONG_RETENTIONS)
    else:
        retentions = list(testbed.DEFAULT_RETENTIONS if args.full else testbed.QUICK_RETENTIONS)
    for option in ("limit", "batch_size", "threads", "workers"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise ValueError(f"--{option.replace('_', '-')} must be a positive integer; got {value}")
    if args.threads > 1 and args.workers > 1:
        raise ValueError(f"--threads {args.threads} needs --workers 1 (each worker runs one torch thread)")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such model folder")
    return run_checked(args, names, retentions)


def run_checked(args, names: list[str], retentions: list[float]) -> int:
    import torch

    from vidpress.evaluation import testbed
    from vidpress.evaluation.testbed_results import (
        RunStore,
        attach_tests,
        format_table,
        load_average,
        paired_tests,
        run_metadata,
        write_results,
    )
    from vidpress.synthetic import QUESTION_FAMILIES
    from vidpress.synthetic.reference import REFERENCE_DIR
    from vidpress.timing import load_warning

    if args.limit is not None:
        indices, seed = list(range(args.limit)), None
    elif args.family is not None:
        indices, seed = list(range(testbed.LONG_EXAMPLES)), None
    elif args.full:
        indices, seed = list(range(testbed.FULL_EXAMPLES)), None
    else:
        indices, seed = testbed.quick_indices(seed=args.seed), args.seed
    model_dir = Path(args.model) if args.model else REFERENCE_DIR
    settings = {"model": str(model_dir.resolve()), "family": args.family, "split": args.split, "examples": indices,
                "seed": seed, "presses": names, "retentions": retentions, "batch_size": args.batch_size}
    store = RunStore(Path(args.out))
    done = store.open(settings, args.overwrite)
    torch.set_num_threads(args.threads)
    meta = run_metadata(model_dir, args.split, len(indices), seed, args.device)
    meta["workers"] = args.workers
    meta["family"] = args.family
    meta["load_average_start"] = load_average()
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr)
    total = 1 + len(names) * len(retentions)
    try:
        model, processor = testbed.load_bench_model(args.model, args.device)
        families = (args.family,) if args.family else QUESTION_FAMILIES
        examples = testbed.examples_at(args.split, indices, families)
        subset = ("the first" if seed is None else f"a stratified subset (seed {seed}) of") + f" {len(examples)}"
        print(f"model: {args.model or 'the shipped reference model'}; {subset} {args.split} examples; "
              f"presses {', '.join(names)}; retentions {', '.join(f'{r:g}' for r in retentions)}"
              + (f"; resuming after {len(done)} finished rows" if done else ""), flush=True)
        results = testbed.run_grid(model, processor, examples, names, retentions, batch_size=args.batch_size,
                                   progress=not args.quiet, done=done, on_row=store.append, workers=args.workers)
    except KeyboardInterrupt:
        kept = len(store.done_keys())
        print(f"interrupted: {kept} of {total} rows kept in {args.out}; run the same command to resume",
              file=sys.stderr)
        return 130
    meta["load_average_end"] = load_average()
    rows = testbed.with_relative_accuracy([row for row, _ in results.values()])
    tests = paired_tests(results)
    attach_tests(rows, tests)
    print(format_table(rows))
    paths = write_results(rows, args.out, meta, tests)
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), store.predictions_path]))
    warning = load_warning()
    if warning:
        print(warning + " (at the end of the run)", file=sys.stderr)
    return 0
