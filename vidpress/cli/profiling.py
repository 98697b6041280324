"""`vidpress profile`: what a press saves, per stage: time, memory, tokens and FLOPs."""

from __future__ import annotations

import sys
from pathlib import Path

from vidpress.cli.common import (
    check_layer_press,
    check_retrieve,
    frame_budgets_option,
    make_retriever,
    policy_option,
    retrieve_options,
    runtime_options,
)


def add_parser(subparsers) -> None:
    from vidpress import presses
    from vidpress.evaluation.checkpoints import NAMES

    command = subparsers.add_parser(
        "profile",
        help="measure what a press saves: per-stage time, memory, tokens and FLOPs",
        description="Time the vision encoder, the press, the LLM prefill and decoding, and measure peak memory, "
        "visual tokens, sequence length and FLOPs, with all tokens and with the press, for one video. Without "
        "--model it builds a random-weight model from a real checkpoint's published config (--config), optionally "
        "with fewer layers, and feeds it synthetic frames through the real processor.",
    )
    command.add_argument("--config", default="tiny", choices=list(NAMES),
                         help="published architecture to build with random weights (default: %(default)s)")
    command.add_argument("--model", help="a local model directory instead of --config")
    command.add_argument("--layers", type=int, help="LLM decoder layers to keep (default: all, as published)")
    command.add_argument("--vision-layers", type=int, help="vision encoder blocks to keep (default: all, as published)")
    command.add_argument("--frames", type=int, default=16, help="video frames (default: %(default)s)")
    command.add_argument("--resolution", type=int, default=448, help="side of the square synthetic frames in px, "
                         "before the processor's resizing (default: %(default)s)")
    command.add_argument("--video", help="profile on this video file instead of synthetic frames")
    command.add_argument("--question", default="What happens in this video?", help="the prompt's question")
    command.add_argument("--press", default="vidcom2", choices=presses.available() + list(presses.fca_variants()),
                         help="press name; NAME+fca is NAME with --frame-budgets vidcom2 (default: %(default)s)")
    command.add_argument("--retention", type=float, default=0.25,
                         help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    frame_budgets_option(command)
    policy_option(command)
    command.add_argument("--repeats", type=int, default=5,
                         help="timed runs per stage, after one warm-up; the full and pressed prefills alternate and "
                         "the speed-up is the median of the pairs' ratios (default: %(default)s)")
    command.add_argument("--decode-tokens", type=int, default=16,
                         help="tokens generated to time decoding (default: %(default)s)")
    runtime_options(command, dtype="float32")
    command.add_argument("--json", help="write {\"full\": {...}, \"pressed\": {...}} (and \"retrieval\"; with "
                         "--pipeline: {\"pipeline\": {...}}; with --stream: {\"stream\": {...}}) to this file")
    retrieve_options(command, "also report the vision encoder's frames, time and FLOPs with all frames and with only "
                      "the frames of the top-K event clips (MARC's retrieval), and the retrieval step's own cost")
    command.add_argument("--pipeline", action="store_true",
                         help="with --retrieve: profile MARC's retrieve-then-press end to end instead (retrieve the "
                         "top-K clips' frames before the vision encoder, encode only them, press them to --retention "
                         "of the FULL video's visual tokens, prefill) against every frame and every token, stage by "
                         "stage; JSON key \"pipeline\". With --press marc, MarcPress's own token-level retrieval is "
                         "turned off (the frames are already retrieved)")
    command.add_argument("--stream", type=int, metavar="N",
                         help="profile a VideoStream instead: N chunks of --chunk-frames frames appended one by one "
                         "(encode, press, evict, prefill-append) with a question after each (--decode-tokens greedy "
                         "tokens), after a warm-up chunk and question on a stream that is then reset; JSON key "
                         "\"stream\". The press must act before the LLM "
                         "without reading the question (e.g. stc, vidcom2)")
    command.add_argument("--chunk-frames", type=int, default=2, help="frames per chunk for --stream (default: "
                         "%(default)s, 1 s at 2 fps)")
    command.add_argument("--memory-tokens", type=int, help="the stream's cap on visual tokens for --stream (default: "
                         "none)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=run)


def run(args) -> int:
    import dataclasses
    import json
    import os

    import numpy as np
    import torch

    from vidpress import video
    from vidpress.evaluation import checkpoints
    from vidpress.evaluation.profiler import (
        format_pipeline,
        format_profile,
        format_retrieval,
        format_stream,
        profile,
        profile_pipeline,
        profile_retrieval,
        profile_stream,
    )
    from vidpress.inputs import build_inputs, video_inputs
    from vidpress.loading import build_press, load_model
    from vidpress.timing import load_warning
    from vidpress.tiny import tiny_video

    press = build_press(args.press, args.retention, args.policy, args.frame_budgets)
    for name in ("frames", "resolution", "repeats", "decode_tokens"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if args.model and (args.layers is not None or args.vision_layers is not None):
        raise ValueError("--layers / --vision-layers scale a --config's random model; they do not apply to --model")
    check_retrieve(args)
    if args.pipeline and args.retrieve is None:
        raise ValueError("--pipeline profiles retrieve-then-press: pass --retrieve K too")
    if args.stream is not None and (args.retrieve is not None or args.video):
        raise ValueError("--stream profiles a stream of synthetic frames; it does not take --retrieve or --video")
    for name in ("stream", "chunk_frames", "memory_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if not args.model:  # the depth is known before the model is built: check a press acting inside the LLM now
        check_layer_press(press, checkpoints.depths(args.config, args.layers, args.vision_layers)[0], args)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        model, processor = load_model(args.model, args.attn, args.device, args.dtype)
        check_layer_press(press, model, args)
        described = f"model {args.model}"
    else:
        print(f"building a random-weight {args.config} ...", flush=True)
        model, processor = checkpoints.build(args.config, layers=args.layers, vision_layers=args.vision_layers,
                                             dtype=dtype, device=args.device, attn_implementation=args.attn)
        text, vision = model.config.get_text_config(), model.config.vision_config
        depth = getattr(vision, "depth", None) or vision.num_hidden_layers
        described = (f"random-weight {args.config}: {text.num_hidden_layers} decoder layers, {depth} vision blocks, "
                     f"{sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters")
    if args.video:
        decoded = video.load(args.video, num_frames=args.frames)
        inputs = video_inputs(processor, decoded, args.question)
        source = f"{args.video}: {args.frames} frames of {decoded.frames.shape[2]}x{decoded.frames.shape[1]}"
        frames, indexed, frame_indices, fps = decoded.frames, args.video, decoded.frame_indices, decoded.fps
    else:
        # Synthetic frames (moving squares) of --resolution px squared go through the real processor. For
        # --retrieve the video is a series of 4-frame scenes (a new random scene each), so it has events to retrieve.
        if args.retrieve is None:
            frames = tiny_video(args.frames, args.resolution, args.resolution)
        else:
            scenes = range(-(-args.frames // 4))
            frames = np.concatenate([tiny_video(4, args.resolution, args.resolution, seed=s)
                                     for s in scenes])[: args.frames]
        inputs = build_inputs(processor, [args.question], [[frames]])
        source = f"synthetic video: {args.frames} frames of {args.resolution}x{args.resolution}"
        source += "" if args.retrieve is None else " in scenes of 4 frames"
        indexed, frame_indices, fps = None, None, 2.0  # the frames themselves are indexed
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr)
    print(f"{described}\n{source}; press {args.press} at retention {args.retention:g}; {args.device}, {args.dtype}, "
          f"{args.attn} attention, {torch.get_num_threads()} threads", flush=True)
    load_start = os.getloadavg()
    result = retrieval = pipeline = stream = None
    if args.stream is not None:
        frames = tiny_video(args.stream * args.chunk_frames, args.resolution, args.resolution)
        stream = profile_stream(model, processor, press, frames, chunk_frames=args.chunk_frames,
                                memory_tokens=args.memory_tokens, question=args.question,
                                answer_tokens=args.decode_tokens, progress=not args.quiet)
        print(format_stream(stream, f"{args.press} at {args.retention:g}"))
    elif args.pipeline:
        from vidpress.presses.marc import MarcPress

        if isinstance(press, MarcPress):  # the frames are retrieved before the encoder: no second retrieval
            press = dataclasses.replace(press, top_k=None)
        retriever, embedder = make_retriever(args, model, processor)
        pipeline = profile_pipeline(model, processor, retriever, press, frames, args.question, args.retention,
                                    video=indexed, frame_indices=frame_indices, fps=fps, repeats=args.repeats,
                                    progress=not args.quiet)
        print(format_pipeline(pipeline, args.retrieve, f"{args.press} to {args.retention:g} of the full video's "
                              f"visual tokens; embedder {embedder}"))
    else:
        result = profile(model, inputs, press, repeats=args.repeats, decode_tokens=args.decode_tokens,
                         progress=not args.quiet)
        print(format_profile(result))
    if args.retrieve is not None and not args.pipeline:
        retriever, embedder = make_retriever(args, model, processor)
        retrieval = profile_retrieval(model, processor, retriever, frames, args.question, video=indexed,
                                      frame_indices=frame_indices, fps=fps, repeats=args.repeats,
                                      progress=not args.quiet)
        print(format_retrieval(retrieval, args.retrieve, embedder))
    if args.json:
        setup = {"config": None if args.model else args.config, "model": args.model, "layers": args.layers,
                 "vision_layers": args.vision_layers, "frames": args.frames,
                 "resolution": None if args.video else args.resolution, "video": args.video, "press": args.press,
                 "retention": args.retention, "device": str(model.device),
                 "dtype": args.dtype, "attn": args.attn, "repeats": args.repeats, "threads": torch.get_num_threads(),
                 "retrieve": args.retrieve, "embedder": args.embedder, "stream": args.stream,
                 "chunk_frames": args.chunk_frames, "memory_tokens": args.memory_tokens,
                 "decode_tokens": args.decode_tokens,
                 # the machine's 1-minute load average when profiling started and ended (timings under load)
                 "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)]}
        if result is not None:
            data = result.to_json(setup)
        else:
            data = {"pipeline": pipeline.to_json(setup)} if pipeline is not None else {"stream": stream.to_json(setup)}
        if retrieval is not None:
            data["retrieval"] = {**dataclasses.asdict(retrieval), "setup": setup}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")
    return 0
