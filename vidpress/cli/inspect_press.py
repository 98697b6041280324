"""`vidpress inspect`: draw which tokens a press keeps on one video."""

from __future__ import annotations

from pathlib import Path

from vidpress.cli.common import check_at_least, check_layer_press, floor_note, layer_summary, video_press_options


def add_parser(subparsers) -> None:
    command = subparsers.add_parser(
        "inspect",
        help="draw which tokens a press keeps on one video",
        description="Save a PNG with the sampled frames, the kept tokens highlighted on each frame and the "
        "per-frame budget as a bar chart.",
    )
    video_press_options(command, "the shipped reference model")
    command.add_argument("--out", default="command.png", help="PNG path (default: %(default)s)")
    command.set_defaults(run=run)


def run(args) -> int:
    import torch

    from vidpress import video
    from vidpress.evaluation.drawing import draw
    from vidpress.evaluation.testbed import load_bench_model
    from vidpress.inputs import video_inputs
    from vidpress.loading import build_press
    from vidpress.timing import frame_budgets

    check_at_least(args, 1, "num_frames")
    if Path(args.out).suffix.lower() != ".png" or Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: pass the path of a .png file to write (e.g. --out kept.png)")
    press = build_press(args.press, args.retention, args.policy, args.frame_budgets)
    video_path = Path(args.video) if args.video else video.sample_video()
    decoded = video.load(video_path, num_frames=args.num_frames)
    model, processor = load_bench_model(args.model, args.device)
    check_layer_press(press, model, args)
    inputs = dict(video_inputs(processor, decoded, args.question).to(model.device))
    # One prefill under the press: presses acting inside the LLM select between its layers, so every press is
    # applied the way a user applies it (which also loads a learned press's policy).
    with torch.no_grad(), press(model) as pressed:
        model(**inputs, logits_to_keep=1)
    report = pressed.last_report
    selection, tokens = report.selections[0], report.videos[0]
    title = f"{args.press} at retention {args.retention:g} on {video_path.name}: "
    if report.layer_tokens:
        title += f"the last LLM layers keep {selection.num_kept}/{selection.num_tokens} tokens"
        detail = f"{layer_summary(report)}\n"
    else:
        title += f"kept {selection.num_kept}/{selection.num_tokens} tokens"
        detail = ""
    path = draw(decoded.frames, tokens, selection, args.out, title)
    print(f"{title}\n{detail}per-frame budgets: {frame_budgets(selection, tokens).tolist()}\nwrote {path}")
    floor_note(report, args.retention)
    return 0
