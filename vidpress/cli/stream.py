"""`vidpress stream`: answer questions about a live video (a file, a URL, a capture device) as it plays."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    from vidpress import presses
    from vidpress.cli.common import runtime_options
    from vidpress.streaming import POLICIES

    command = subparsers.add_parser(
        "stream",
        help="answer questions about a live video from a bounded memory",
        description="Stream a video through the model chunk by chunk (encode, press, prefill only the new tokens) "
        "and answer each --ask question when the stream reaches its time; answers are printed with their stream "
        "time, then the stream's statistics. Without --model and --video it runs the bundled random-weight demo "
        "model on the bundled sample clip.",
    )
    command.add_argument("--model", help="local model directory (default: the bundled random-weight demo model)")
    command.add_argument("--video", help="anything PyAV opens: a file, an RTSP/HTTP URL, a capture device "
                         "(default: the bundled sample clip)")
    command.add_argument("--ask", action="append", default=[], metavar="'SECONDS: QUESTION'",
                         help="a question asked when the stream reaches SECONDS (repeatable)")
    command.add_argument("--realtime", action="store_true", help="pace a file at its own frame rate")
    command.add_argument("--memory-tokens", type=int, help="cap on the visual tokens in the cache (default: none)")
    command.add_argument("--press", choices=presses.available(), help="press applied to each chunk (default: none; "
                         "stc also reuses vision-encoder work on SigLIP/CLIP towers)")
    command.add_argument("--retention", type=float,
                         help="the press's retention (default: the press's own; stc: the released 60/196)")
    command.add_argument("--memory-policy", choices=sorted(POLICIES),
                         help="what leaves the memory at the cap (default: stc with --press stc, else fifo)")
    command.add_argument("--recall-clips", type=int, default=2,
                         help="evicted chunks a question brings back with --memory-policy recall (default: 2)")
    command.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default: %(default)s)")
    command.add_argument("--chunk-seconds", type=float, default=1.0,
                         help="stream time per chunk (default: %(default)s)")
    command.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: %(default)s)")
    runtime_options(command, "auto")
    command.set_defaults(run=run)


def run(args) -> int:
    from vidpress import video
    from vidpress.loading import DEMO_FAMILY, load_model
    from vidpress.streaming import VideoStream
    from vidpress.streaming.source import SourceError, parse_question, video_chunks

    questions = sorted((parse_question(text) for text in args.ask), key=lambda q: q[0])
    if args.memory_tokens is not None and args.memory_tokens < 1:
        raise ValueError(f"--memory-tokens must be >= 1; got {args.memory_tokens}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}")
    source = args.video or str(video.sample_video())
    model, processor = load_model(args.model, args.attn, args.device, args.dtype)
    print(f"model: {args.model}" if args.model else
          f"model: random-weight demo model ({DEMO_FAMILY}, tiny, untrained: its answers are noise)")
    stream = VideoStream(model, processor, press=args.press, memory_tokens=args.memory_tokens,
                         policy=args.memory_policy, retention=args.retention, recall_clips=args.recall_clips)
    print(f"stream: {source} at {args.fps:g} fps in {args.chunk_seconds:g} s chunks; press {args.press or 'none'}; "
          f"memory {args.memory_tokens or 'unbounded'} visual tokens, policy {stream.policy.name}"
          f"{' (realtime)' if args.realtime else ''}")

    def answer(when: float, question: str, now: float | None) -> None:
        text = stream.ask(question, max_new_tokens=args.max_new_tokens)
        at = f"{now:.1f}" if now is not None else "0.0"
        print(f"[{at} s] Q ({when:g} s): {question}\n[{at} s] A: {text.strip()!r}", flush=True)

    now = None
    failed = None
    try:
        for frames, seconds in video_chunks(source, args.fps, args.chunk_seconds, args.realtime):
            stream.append(frames, seconds)
            now = seconds[-1]
            while questions and questions[0][0] <= now:
                answer(*questions.pop(0), now)
    except SourceError as error:
        if now is None:  # nothing was streamed: bad input, not a stream that broke
            raise
        failed = error
        print(f"error: {error}", file=sys.stderr)
    if questions:
        why = "the source failed" if failed else "the stream ended"
        print(f"{why} at {now or 0:.1f} s; answering the {len(questions)} later question(s) from the stream so far")
        for when, question in questions:
            answer(when, question, now)
    stats = stream.stats()
    stages = stats.pop("stage_ms_median")
    print("ms per stage (median): " + ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in stages.items()))
    print("stats: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    return 1 if failed else 0
