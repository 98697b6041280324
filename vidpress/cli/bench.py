"""`vidpress bench`: compare presses on the synthetic video-QA test split (the main job)."""

from __future__ import annotations

import os
from pathlib import Path

from vidpress.cli.common import default_device, split_names


def add_parser(subparsers) -> None:
    command = subparsers.add_parser(
        "bench",
        help="compare presses on the synthetic video-QA test split (the main job)",
        description="Run every press at every retention on the synthetic test split with the shipped reference "
        "model (or --model) and print accuracy (overall and per question family), evidence recall, kept visual "
        "tokens, LLM prefill time and peak memory; write results.json, results.csv and accuracy.png to --out.",
    )
    command.add_argument("--presses", help="comma-separated press names (default: all registered presses and the "
                         "learned rows cacovid, marc-cgrpo; with --model, the presses that need no trained checkpoint)")
    command.add_argument("--retentions",
                         help="comma-separated retentions in (0, 1] (default: 0.5,0.25,0.15,0.1,0.05)")
    command.add_argument("--model", help="local model directory (default: the shipped reference model)")
    command.add_argument("--limit", type=int, default=600, help="number of test examples (default: %(default)s)")
    command.add_argument("--split", default="test", choices=["train", "val", "test"],
                         help="synthetic split (default: test)")
    command.add_argument("--out", default="bench-results", help="output folder (default: %(default)s); earlier results "
                         "there are kept unless --overwrite")
    command.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    command.add_argument("--batch-size", type=int, default=32, help="examples per forward (default: %(default)s)")
    command.add_argument("--device", default=default_device(), help="torch device (default: %(default)s)")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.set_defaults(run=run)


def run(args) -> int:
    from vidpress.evaluation import bench
    from vidpress.synthetic import make_split
    from vidpress.types import check_retention

    if args.presses:
        names = split_names(args.presses)
    else:  # the learned rows' checkpoints are trained for the shipped reference model only
        names = bench.checkpoint_free_names() if args.model else bench.bench_names()
    retentions = ([float(r) for r in split_names(args.retentions)] if args.retentions
                  else list(bench.DEFAULT_RETENTIONS))
    for name in names:  # fail before the long encoding step
        if name not in bench.bench_names():
            raise ValueError(f"unknown press {name!r}; available presses: {', '.join(bench.bench_names())}")
    for r in retentions:
        check_retention(r)
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive number of test examples; got {args.limit}")
    check_bench_out(Path(args.out), args.overwrite)
    model, processor = bench.load_bench_model(args.model, args.device)
    examples = make_split(args.split, args.limit)
    print(f"model: {args.model or 'the shipped reference model'}; {len(examples)} {args.split} examples; "
          f"presses {', '.join(names)}; retentions {', '.join(f'{r:g}' for r in retentions)}")
    rows = bench.run_bench(model, processor, examples, names, retentions, batch_size=args.batch_size,
                           progress=not args.quiet)
    print(bench.format_table(rows))
    paths = bench.write_results(rows, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def check_bench_out(out: Path, overwrite: bool) -> None:
    """Before the run: `out` must be a folder we can write, holding no earlier results unless `overwrite`."""
    from vidpress.evaluation.bench import RESULT_FILES

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for {', '.join(RESULT_FILES)}")
    earlier = [name for name in RESULT_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise ValueError(f"--out {out} already holds results ({', '.join(earlier)}); pass another --out, "
                         "or --overwrite to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create the folder ({error.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: the folder is not writable")
