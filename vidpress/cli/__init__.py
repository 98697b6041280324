"""The `vidpress` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def cmd_generate(args) -> int:
    import torch

    from vidpress import video
    from vidpress.inputs import video_inputs
    from vidpress.loading import DEMO_FAMILY, build_press, load_model
    from vidpress.timing import frame_budgets, time_prefill

    press = build_press(args.press, args.retention, args.policy)
    _check_retrieve(args)
    video_path = Path(args.video) if args.video else video.sample_video()
    decoded = video.load(video_path, num_frames=args.num_frames)
    model, processor = load_model(args.model, args.attn, args.device, args.dtype)
    check_layer_press(press, model, args, demo=args.model is None)
    if args.model is None:
        print(f"model: random-weight demo model ({DEMO_FAMILY}, tiny, untrained: its answer is noise)")
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
    timing = time_prefill(model, inputs, press, repeats=args.repeats)

    answer = processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0]
    print(f"press: {args.press} (requested retention {args.retention:g})")
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


def _check_retrieve(args) -> None:
    if args.retrieve is not None and args.retrieve < 1:
        raise ValueError(f"--retrieve must be a number of clips >= 1; got {args.retrieve}")
    if args.embedder is not None and args.retrieve is None:
        raise ValueError("--embedder chooses the embedder of --retrieve; pass --retrieve K too")


def check_layer_press(press, model, args, demo: bool = False) -> None:
    """A press acting inside the LLM must fit the model's depth; say so, with the layer floor, before any work.
    demo: the model is `generate`'s tiny demo model (the error then names a deeper one)."""
    from vidpress.presses.base import LayerPress

    if not isinstance(press, LayerPress):
        return
    layers = model.config.get_text_config().num_hidden_layers
    try:
        press.schedule(layers)
    except ValueError as error:
        hint = ""
        if demo:
            hint = ("; the demo model is tiny: pass --model with a deeper one, e.g. the shipped reference model "
                    "--model vidpress/synthetic/reference_model (4 layers)")
        raise ValueError(f"--press {args.press} drops tokens between LLM layers and does not fit this model's {layers} "
                         f"layers ({error}){hint}") from None


def layer_summary(report) -> str:
    """'LLM layers processed 128, 128, 35, 35 of them (layer average 0.637)' for a press acting inside the LLM."""
    return (f"LLM layers processed {', '.join(str(n) for n in report.layer_tokens)} of them "
            f"(layer average {report.retention:.3f} = effective retention)")


def floor_note(report, requested: float) -> None:
    """Print why the effective retention is above the requested one, when it is."""
    if report.layer_tokens and report.retention > requested + 0.01:
        print(f"note: effective retention {report.retention:.3f} > requested {requested:g}: the LLM layers before "
              "the press's first stage see every token, so it cannot go lower on this model's "
              f"{len(report.layer_tokens)} layers")


def make_retriever(args, model, processor):
    """The top-`--retrieve` clip retriever: a CLIP/SigLIP folder (`--embedder`) or the VLM's own embeddings."""
    from vidpress.retrieval import CLIPEmbedder, VisualMemoryRetriever, VLMEmbedder

    progress = not getattr(args, "quiet", False)
    if args.embedder:
        embedder = CLIPEmbedder.from_pretrained(args.embedder, device=args.device, progress=progress)
        name = f"CLIPEmbedder({args.embedder})"
    else:
        embedder, name = VLMEmbedder(model, processor, progress=progress), "VLMEmbedder (the model's own features)"
    return VisualMemoryRetriever(embedder, top_k=args.retrieve, progress=progress), name


def retrieve_episode(args, model, processor, video_path, decoded):
    """MARC's retrieval before the encoder: cut the whole file into events, keep the sampled frames of the top-k
    clips for the question (the episodic memory video)."""
    import dataclasses

    from vidpress.inputs import pad_frames

    retriever, name = make_retriever(args, model, processor)
    memory = retriever.index_video(video_path)
    frames, indices = retriever.episodic_video(decoded.frames, args.question, memory=memory,
                                               frame_indices=decoded.frame_indices)
    clips = [c for c in memory.clips if any(c[0] <= i < c[1] for i in indices.tolist())]
    print(f"retrieval ({name}): {len(memory.clips)} event clips; top-{args.retrieve} {clips} keep {len(frames)} of "
          f"{len(decoded.frames)} sampled frames {indices.tolist()}")
    position = {index: k for k, index in enumerate(decoded.frame_indices)}
    timestamps = [decoded.timestamps[position[i]] for i in indices.tolist()]
    frames, kept = pad_frames(frames, indices.tolist(), model)
    timestamps += [timestamps[-1]] * (len(kept) - len(timestamps))
    return dataclasses.replace(decoded, frames=frames, frame_indices=kept, timestamps=timestamps)


def cmd_bench(args) -> int:
    from vidpress.evaluation import bench
    from vidpress.synthetic import make_split
    from vidpress.types import check_retention

    if args.presses:
        names = _names(args.presses)
    else:  # the learned rows' checkpoints are trained for the shipped reference model only
        names = bench.checkpoint_free_names() if args.model else bench.bench_names()
    retentions = [float(r) for r in _names(args.retentions)] if args.retentions else list(bench.DEFAULT_RETENTIONS)
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


def cmd_inspect(args) -> int:
    import torch

    from vidpress import video
    from vidpress.evaluation.bench import load_bench_model
    from vidpress.evaluation.inspect import draw
    from vidpress.inputs import video_inputs
    from vidpress.loading import build_press
    from vidpress.timing import frame_budgets

    press = build_press(args.press, args.retention, args.policy)
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


def cmd_eval(args) -> int:
    from vidpress.evaluation import benchmarks, runner
    from vidpress.loading import build_press, load_model

    benchmark = benchmarks.get(args.bench)
    press = None if args.press == "none" else build_press(args.press, args.retention, args.policy)
    for name in ("num_frames", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    samples = benchmark.load(Path(args.data), skip_missing=args.skip_missing)[: args.limit]
    if not samples:
        raise ValueError(f"--data {args.data}: no {args.bench} question has its video there")
    shard = runner.Shard(args.device)
    retention = 1.0 if press is None else args.retention
    settings = runner.run_settings(
        benchmark=args.bench, model=args.model, data=args.data, press=press, press_name=args.press,
        policy=args.policy, num_frames=args.num_frames, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
        attn=args.attn)
    out = Path(args.out or f"eval-results/{args.bench}/{Path(args.model).name}-{args.press}-{retention:g}-"
               f"{args.num_frames}f")
    # Every process checks, before the model loads: a refused resume costs nothing and no process is left waiting.
    runner.check_run_settings(out, settings, overwrite=args.overwrite, write=False)
    model, processor = load_model(args.model, args.attn, shard.device or args.device, args.dtype)
    if shard.is_main:
        print(f"{args.bench}: {len(samples)} questions from {args.data}; press {args.press}"
              f"{'' if press is None else f' at retention {retention:g}'}; {args.num_frames} frames; "
              f"{shard.world} process(es); results in {out}")
    summary = runner.run(model, processor, benchmark, samples, press, out, settings, shard, num_frames=args.num_frames,
                         max_new_tokens=args.max_new_tokens, progress=not args.quiet, overwrite=args.overwrite)
    if summary is not None:
        print(runner.format_summary(summary))
        print(f"wrote {out / 'results.json'} (per-question answers in {out / 'samples'})")
    return 0


def cmd_profile(args) -> int:
    import dataclasses
    import json

    import numpy as np
    import torch

    from vidpress import video
    from vidpress.evaluation import checkpoints
    from vidpress.evaluation.profiler import format_profile, format_retrieval, profile, profile_retrieval
    from vidpress.inputs import build_inputs, video_inputs
    from vidpress.loading import build_press, load_model
    from vidpress.testing import tiny_video

    press = build_press(args.press, args.retention, args.policy)
    for name in ("frames", "resolution", "repeats", "decode_tokens"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if args.model and (args.layers is not None or args.vision_layers is not None):
        raise ValueError("--layers / --vision-layers scale a --config's random model; they do not apply to --model")
    _check_retrieve(args)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        model, processor = load_model(args.model, args.attn, args.device, args.dtype)
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
    print(f"{described}\n{source}; press {args.press} at retention {args.retention:g}; {args.device}, {args.dtype}, "
          f"{args.attn} attention, {torch.get_num_threads()} threads", flush=True)
    result = profile(model, inputs, press, repeats=args.repeats, decode_tokens=args.decode_tokens,
                     progress=not args.quiet)
    print(format_profile(result))
    retrieval = None
    if args.retrieve is not None:
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
                 "retrieve": args.retrieve, "embedder": args.embedder}
        data = result.to_json(setup)
        if retrieval is not None:
            data["retrieval"] = {**dataclasses.asdict(retrieval), "setup": setup}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")
    return 0


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vidpress", description="Visual-token compression for Video LLMs.")
    top.add_argument("-v", "--verbose", action="store_true", help="log what the presses do")
    sub = top.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="answer a question about a video with a press applied",
        description="Answer a question about a video with a press applied; prints the answer, visual tokens "
        "before/after, per-frame budgets and prefill time with and without the press. Without --model and "
        "--video it runs the bundled random-weight demo model on the bundled sample video.",
    )
    _video_press_options(gen, "the bundled random-weight demo model")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: %(default)s)")
    gen.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                     help="attention implementation")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="weights dtype")
    gen.add_argument("--repeats", type=int, default=3, help="prefill timing repeats (default: %(default)s)")
    _retrieve_options(gen, "keep only the sampled frames of the top-K event clips for the question (MARC's "
                      "retrieval, before the vision encoder); the whole file is cut into events first")
    gen.set_defaults(run=cmd_generate)

    bench = sub.add_parser(
        "bench",
        help="compare presses on the synthetic video-QA test split (the main job)",
        description="Run every press at every retention on the synthetic test split with the shipped reference "
        "model (or --model) and print accuracy (overall and per question family), evidence recall, kept visual "
        "tokens, LLM prefill time and peak memory; write results.json, results.csv and accuracy.png to --out.",
    )
    bench.add_argument("--presses", help="comma-separated press names (default: all registered presses and the "
                       "learned rows cacovid, marc-cgrpo; with --model, the presses that need no trained checkpoint)")
    bench.add_argument("--retentions",
                       help="comma-separated retentions in (0, 1] (default: 0.5,0.25,0.15,0.1,0.05)")
    bench.add_argument("--model", help="local model directory (default: the shipped reference model)")
    bench.add_argument("--limit", type=int, default=600, help="number of test examples (default: %(default)s)")
    bench.add_argument("--split", default="test", choices=["train", "val", "test"],
                       help="synthetic split (default: test)")
    bench.add_argument("--out", default="bench-results", help="output folder (default: %(default)s); earlier results "
                       "there are kept unless --overwrite")
    bench.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    bench.add_argument("--batch-size", type=int, default=32, help="examples per forward (default: %(default)s)")
    bench.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(run=cmd_bench)

    inspect = sub.add_parser(
        "inspect",
        help="draw which tokens a press keeps on one video",
        description="Save a PNG with the sampled frames, the kept tokens highlighted on each frame and the "
        "per-frame budget as a bar chart.",
    )
    _video_press_options(inspect, "the shipped reference model")
    inspect.add_argument("--out", default="inspect.png", help="PNG path (default: %(default)s)")
    inspect.set_defaults(run=cmd_inspect)

    from vidpress import presses
    from vidpress.evaluation.benchmarks import BENCHMARKS

    evaluate = sub.add_parser(
        "eval",
        help="score a pressed model on a video-QA benchmark read from a local folder",
        description="Answer the multiple-choice questions of MVBench, Video-MME, MLVU or LongVideoBench with a "
        "press applied, using each benchmark's published annotation layout, frame sampling, prompt and answer "
        "scoring; print accuracy overall and per category. Every answer is saved as it is produced, so a rerun "
        "with the same --out resumes. Shard over processes with `accelerate launch -m vidpress eval ...`.",
    )
    evaluate.add_argument("--model", required=True, help="local model directory (from save_pretrained)")
    evaluate.add_argument("--bench", required=True, choices=list(BENCHMARKS), help="benchmark")
    evaluate.add_argument("--data", required=True, help="the benchmark's local folder, in its published layout")
    evaluate.add_argument("--press", default="vidcom2", choices=["none", *presses.available()],
                          help="press name, or none for all tokens (default: %(default)s)")
    evaluate.add_argument("--retention", type=float, default=0.25,
                          help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    _policy_option(evaluate)
    evaluate.add_argument("--num-frames", type=int, default=16, help="frames sampled per video (default: %(default)s)")
    evaluate.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: %(default)s)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N questions")
    evaluate.add_argument("--skip-missing", action="store_true",
                          help="skip questions whose video (or task file) is missing")
    evaluate.add_argument("--out", help="results folder (default: eval-results/<bench>/<model>-<press>-<retention>-"
                          "<frames>f); a rerun with the same settings resumes there, other settings are refused")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="discard the results already in --out and start over")
    _runtime_options(evaluate, dtype="auto")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=cmd_eval)

    from vidpress.evaluation.checkpoints import NAMES

    prof = sub.add_parser(
        "profile",
        help="measure what a press saves: per-stage time, memory, tokens and FLOPs",
        description="Time the vision encoder, the press, the LLM prefill and decoding, and measure peak memory, "
        "visual tokens, sequence length and FLOPs, with all tokens and with the press, for one video. Without "
        "--model it builds a random-weight model from a real checkpoint's published config (--config), optionally "
        "with fewer layers, and feeds it synthetic frames through the real processor.",
    )
    prof.add_argument("--config", default="tiny", choices=list(NAMES),
                      help="published architecture to build with random weights (default: %(default)s)")
    prof.add_argument("--model", help="a local model directory instead of --config")
    prof.add_argument("--layers", type=int, help="LLM decoder layers to keep (default: all, as published)")
    prof.add_argument("--vision-layers", type=int, help="vision encoder blocks to keep (default: all, as published)")
    prof.add_argument("--frames", type=int, default=16, help="video frames (default: %(default)s)")
    prof.add_argument("--resolution", type=int, default=448, help="side of the square synthetic frames in px, "
                      "before the processor's resizing (default: %(default)s)")
    prof.add_argument("--video", help="profile on this video file instead of synthetic frames")
    prof.add_argument("--question", default="What happens in this video?", help="the prompt's question")
    prof.add_argument("--press", default="vidcom2", choices=presses.available(),
                      help="press name (default: %(default)s)")
    prof.add_argument("--retention", type=float, default=0.25,
                      help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    _policy_option(prof)
    prof.add_argument("--repeats", type=int, default=3,
                      help="timed runs per stage, after one warm-up (default: %(default)s)")
    prof.add_argument("--decode-tokens", type=int, default=16,
                      help="tokens generated to time decoding (default: %(default)s)")
    _runtime_options(prof, dtype="float32")
    prof.add_argument("--json", help="write {\"full\": {...}, \"pressed\": {...}} (and \"retrieval\") to this file")
    _retrieve_options(prof, "also report the vision encoder's frames, time and FLOPs with all frames and with only "
                      "the frames of the top-K event clips (MARC's retrieval), and the retrieval step's own cost")
    prof.add_argument("--quiet", action="store_true", help="no progress bar")
    prof.set_defaults(run=cmd_profile)
    train = sub.add_parser("train", help="train a model or a learned press",
                           description="Train a model or a learned press.")
    from vidpress.cli.train import add_train_parsers

    add_train_parsers(train.add_subparsers(dest="trainer", required=True))
    return top


def _video_press_options(command: argparse.ArgumentParser, default_model: str) -> None:
    """The options of the commands that press one video: model, video, question, press, retention, frames, device."""
    from vidpress import presses

    command.add_argument("--model", help=f"local model directory (default: {default_model})")
    command.add_argument("--video", help="video file (default: the bundled sample clip)")
    command.add_argument("--question", default="What happens in this video?",
                         help="the question (default: %(default)r)")
    command.add_argument("--press", default="vidcom2", choices=presses.available(),
                         help="press name (default: %(default)s)")
    command.add_argument("--retention", type=float, default=0.25,
                         help="fraction of video tokens kept, in (0, 1] (default: %(default)s)")
    command.add_argument("--num-frames", type=int, default=16,
                         help="frames sampled evenly from the video (default: %(default)s)")
    _policy_option(command)
    command.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")


def _retrieve_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--retrieve", type=int, metavar="K", help=what)
    command.add_argument("--embedder", metavar="PATH", help="local CLIP/SigLIP-style folder embedding clips and the "
                         "question for --retrieve (default: the model's own vision features and text embeddings)")


def _runtime_options(command: argparse.ArgumentParser, dtype: str) -> None:
    """--device, --dtype (default `dtype`; "auto" = the checkpoint's own) and --attn of the commands that load a
    model."""
    dtypes = ["float32", "bfloat16", "float16"] if dtype != "auto" else ["auto", "float32", "bfloat16", "float16"]
    command.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    command.add_argument("--dtype", default=dtype, choices=dtypes, help="weights dtype (default: %(default)s)")
    command.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                         help="attention implementation (default: %(default)s)")


def _policy_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--policy", help="trained policy folder for --press cacovid (e.g. "
                         "vidpress/synthetic/cacovid_reference, trained for the shipped reference model)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# What each `vidpress train` trainer imports from the [train] extra (checked before any work starts).
TRAIN_NEEDS = {"cacovid": ("accelerate",), "cgrpo": ("trl", "accelerate", "datasets")}
# The extra that provides each optional import, for the one-line error when one is missing.
EXTRA_OF = {"trl": "train", "peft": "train", "datasets": "train", "accelerate": "eval", "pyarrow": "eval",
            "faiss": "retrieval"}


def check_device(device: str) -> str:
    """`device` if torch can use it here; ValueError naming what is wrong and what is accepted otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device; pass e.g. cpu, cuda or cuda:1") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0 ...)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return device


def _check_train_extra(args) -> None:
    import importlib.util

    needed = list(TRAIN_NEEDS.get(args.trainer, ()))
    if getattr(args, "lora", False):
        needed.append("peft")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"vidpress train {args.trainer} needs {', '.join(missing)} from the [train] extra: "
                         'pip install "vidpress[train]"')


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        if args.command == "train":
            _check_train_extra(args)
        return args.run(args)
    except ValueError as error:  # bad input: say what was wrong, no traceback
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional dependency: name the extra that installs it
        package = (error.name or "").split(".")[0]
        extra = EXTRA_OF.get(package)
        hint = f': pip install "vidpress[{extra}]"' if extra else ""
        print(f"error: vidpress {args.command} needs the {package or error} package{hint}", file=sys.stderr)
        return 2
    except Exception as error:  # anything else still gets one line; -v shows where it came from
        if args.verbose:
            raise
        print(f"error: {type(error).__name__}: {_one_line(error)} "
              f"(`vidpress -v {args.command} ...` shows the traceback)", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
