"""`vidpress generate`: answer a question about one video with a press applied."""

from __future__ import annotations

import sys
from pathlib import Path

from vidpress.cli.common import (
    check_at_least,
    check_layer_press,
    check_retrieve,
    floor_note,
    layer_summary,
    retrieve_episode,
    retrieve_options,
    video_press_options,
)


def add_parser(subparsers) -> None:
    command = subparsers.add_parser(
        "generate",
        help="answer a question about a video with a press applied",
        description="Answer a question about a video with a press applied; prints the answer, visual tokens "
        "before/after, per-frame budgets and prefill time with and without the press. Without --model it runs the "
        "shipped reference model (a tiny Qwen2.5-VL trained on the synthetic world: real clips get answers that mean "
        "nothing); --model demo runs a random-weight demo model instead. Without --video: the bundled sample clip.",
    )
    video_press_options(command, "the shipped reference model, vidpress/synthetic/reference_model; 'demo': a "
                        "random-weight tiny model")
    command.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: %(default)s)")
    command.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                         help="attention implementation")
    command.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                         help="weights dtype")
    command.add_argument("--repeats", type=int, default=3, help="prefill timing repeats (default: %(default)s)")
    retrieve_options(command, "keep only the sampled frames of the top-K event clips for the question (MARC's "
                      "retrieval, before the vision encoder); the whole file is cut into events first")
    command.set_defaults(run=run)


def run(args) -> int:
    import torch

    from vidpress import video
    from vidpress.inputs import video_inputs
    from vidpress.loading import DEMO_FAMILY, build_press, load_model
    from vidpress.synthetic.reference import REFERENCE_DIR
    from vidpress.timing import frame_budgets, load_warning, time_prefill

    check_at_least(args, 1, "num_frames", "max_new_tokens", "repeats")
    press = build_press(args.press, args.retention, args.policy, args.frame_budgets)
    check_retrieve(args)
    video_path = Path(args.video) if args.video else video.sample_video()
    decoded = video.load(video_path, num_frames=args.num_frames)
    demo = args.model == "demo"
    model_dir = None if demo else args.model or REFERENCE_DIR
    model, processor = load_model(model_dir, args.attn, args.device, args.dtype)
    check_layer_press(press, model, args, demo=demo)
    if demo:
        print(f"model: random-weight demo model ({DEMO_FAMILY}, tiny, untrained: its answer is noise)")
    elif args.model is None:
        print(f"model: the shipped reference model ({REFERENCE_DIR}; trained on the synthetic world only)")
    else:
        print(f"model: {args.model}")
    print(f"video: {video_path} ({len(decoded.frames)} frames of {decoded.total_frames}, {decoded.duration:.1f}s)")
    if args.retrieve is not None:
        decoded = retrieve_episode(args, model, processor, video_path, decoded)
    inputs = video_inputs(processor, decoded, args.question).to(model.device)
    prompt_length = inputs["input_ids"].shape[1]

    with torch.no_grad(), press(model) as pressed:
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        report = pressed.last_report
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr)
    timing = time_prefill(model, inputs, press, repeats=args.repeats)

    answer = processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0]
    fca = " with VidCom²'s frame budgets" if press.frame_budgets and not args.press.endswith("+fca") else ""
    print(f"press: {args.press}{fca} (requested retention {args.retention:g})")
    print(f"answer: {answer.strip()!r}")
    if report.layer_tokens:  # pressed inside the LLM: the prompt enters whole, the layers process fewer tokens
        print(f"visual tokens: {report.visual_tokens_before} enter the LLM; {layer_summary(report)}; "
              f"sequence {report.sequence_length[0]} (cut inside the LLM)")
    else:
        print(f"visual tokens: {report.visual_tokens_before} -> {report.visual_tokens_after} (effective retention "
              f"{report.retention:.3f}); sequence {report.sequence_length[0]} -> {report.sequence_length[1]}")
    floor_note(report, args.retention)
    for i, selection in enumerate(report.selections):
        which = " in the last layers" if report.layer_tokens else ""
        print(f"per-frame budgets{which} (video {i}, {report.videos[i].tokens_per_frame} tokens per frame): "
              f"{frame_budgets(selection, report.videos[i]).tolist()}")
    print(f"LLM prefill: {timing.llm_full_ms:.1f} ms without the press, {timing.llm_pressed_ms:.1f} ms with it "
          f"({timing.llm_speedup:.2f}x; sequence ratio {timing.sequence_ratio:.2f}x)")
    print(f"vision encoder: {timing.vision_ms:.1f} ms (same with and without); press: {timing.press_ms:.1f} ms "
          f"(median of {args.repeats})")
    return 0
