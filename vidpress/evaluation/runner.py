"""`vidpress eval`: answer a benchmark's questions with a pressed model, one result file per question.

Each question's result is written to `<out>/samples/<id>.json` as soon as it is answered, so an interrupted run
resumes where it stopped. Under `accelerate launch` (or torchrun) every process takes every N-th question that
has no result yet; the main process then scores all results and writes `<out>/results.json`.
`<out>/run.json` records the settings that change answers (`run_settings`); resuming with other settings is refused
(`--overwrite` discards the earlier results instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vidpress.evaluation.benchmarks import Benchmark, Sample
from vidpress.evaluation.stream_eval import StreamOptions, answer_streaming
from vidpress.files import read_json, require_keys
from vidpress.inputs import video_inputs
from vidpress.video import VideoDecodeError


class Shard:
    """This process's place among the processes of an `accelerate launch` / torchrun run (rank 0 of 1 alone)."""

    def __init__(self, device: str):
        try:
            from accelerate import PartialState
        except ImportError:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError("sharding over several processes needs accelerate: pip install accelerate") from None
            self._state, self.rank, self.world = None, 0, 1
            return
        # cpu=True lets accelerate form a CPU process group (gloo) instead of expecting one GPU per process. The
        # long timeout: a process that finishes its share waits at the final barrier for the slowest one.
        self._state = PartialState(cpu=torch.device(device).type == "cpu", timeout=datetime.timedelta(hours=24))
        self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def device(self) -> str | None:
        """The device accelerate assigned to this process on a multi-GPU run, else None (use the caller's)."""
        if self._state is None or self.world == 1 or self._state.device.type == "cpu":
            return None
        return str(self._state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


def run_settings(*, benchmark: str, model, data, press, press_name: str, policy=None, num_frames: int,
                 max_new_tokens: int, dtype: str, attn: str, stream: dict | None = None) -> dict:
    """What decides a run's answers, as recorded in `run.json`: benchmark, model and data folders (absolute),
    press name, retention and every other knob of the press, the policy folder and a digest of its files (for
    a press with a trained policy), frames, answer length, dtype and attention implementation, and for a
    streaming benchmark the stream's options (memory cap, memory policy, chunk frames)."""
    knobs = {}
    if press is not None:
        for item in dataclasses.fields(press):
            value = getattr(press, item.name)
            if item.name != "policy":  # the policy is recorded by its folder and contents below
                knobs[item.name] = value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    extra = {} if stream is None else {"stream": stream}
    return {
        **extra,
        "benchmark": benchmark,
        "model": str(Path(model).resolve()),
        "data": str(Path(data).resolve()),
        "press": press_name,
        "retention": knobs.pop("retention", 1.0),
        "press_knobs": knobs,
        "policy": None if policy is None else str(Path(policy).resolve()),
        "policy_sha256": None if policy is None else _folder_digest(Path(policy)),
        "num_frames": num_frames,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "attn": attn,
    }


def _folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of the files in `folder` (a retrained policy in the same folder differs)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_run_settings(out_dir: Path, settings: dict, overwrite: bool = False, write: bool = True) -> None:
    """Check `<out_dir>/run.json` against `settings`, then (write=True) record them there.

    A folder with results of other settings raises ValueError naming each difference, unless `overwrite`; with
    write=True and `overwrite`, the earlier answers and summary are deleted first.
    """
    out_dir = Path(out_dir)
    path = out_dir / "run.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; pass a folder for the results")
    if path.exists() and not overwrite:
        previous = read_json(path, "settings record",
                             remedy="pass another --out, or --overwrite to discard the results there")
        differ = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if differ:
            changes = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in differ)
            raise ValueError(
                f"{out_dir} holds results of a run with other settings ({changes}); "
                "pass another --out, the same settings to resume it, or --overwrite to discard them"
            )
        return
    if not write:
        return
    if overwrite:
        shutil.rmtree(out_dir / "samples", ignore_errors=True)
        (out_dir / "results.json").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def read_record(path: Path) -> dict:
    """One question's result as `run` wrote it; a damaged file is a ValueError that names it and the way out."""
    record = read_json(path, "answer record", remedy="delete it to answer that question again")
    require_keys(record, ("id", "categories", "correct"), str(path))
    return record


def _write_json(path: Path, data) -> None:
    # Write beside and rename, so an interrupted write never leaves a truncated result that resuming would trust.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@torch.no_grad()
def answer(model, processor, benchmark: Benchmark, sample: Sample, press, num_frames: int, max_new_tokens: int,
           stream: StreamOptions | None = None) -> dict:
    """Answer one question (greedy) and score it; a video that cannot be decoded gives a wrong answer with its error.
    A streaming benchmark's question is answered through a `VideoStream` at its time (`stream_eval`, `stream`).

    Returns the per-question record: id, categories, response, prediction (letter or None), answer, correct,
    visual_tokens / kept_tokens (before / after the press), frames, seconds.
    """
    if benchmark.streaming:
        return answer_streaming(model, processor, benchmark, sample, press, num_frames, max_new_tokens,
                                stream or StreamOptions())
    start = time.perf_counter()
    record = {"id": sample.id, "categories": sample.categories, "answer": sample.answer}
    try:
        video = benchmark.frames(sample, num_frames)
    except VideoDecodeError as error:
        return {**record, "response": "", "prediction": None, "correct": False, "error": str(error)}
    inputs = video_inputs(processor, video, benchmark.prompt(sample), system=benchmark.system_prompt,
                          answer_prefix=benchmark.answer_prefix).to(model.device)
    prompt_length = inputs["input_ids"].shape[1]
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    kept = visual
    context = press(model) if press is not None else contextlib.nullcontext()
    with context as pressed:
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        if pressed is not None:
            report = pressed.last_report
            kept = visual - report.visual_tokens_before + report.visual_tokens_after
    response = processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0]
    return {
        **record,
        "response": response,
        "prediction": benchmark.extract(response, sample),
        "parsed": benchmark.parsed(response, sample),
        "correct": benchmark.is_correct(response, sample),
        "visual_tokens": visual,
        "kept_tokens": kept,
        "frames": len(video.frames),
        "seconds": time.perf_counter() - start,
    }


def run(model, processor, benchmark: Benchmark, samples: list[Sample], press, out_dir, settings: dict, shard: Shard,
        num_frames: int = 16, max_new_tokens: int = 32, progress: bool = True, overwrite: bool = False,
        stream: StreamOptions | None = None) -> dict | None:
    """Answer every sample without a result in `out_dir` (this process's share), then score all of them.
    overwrite: discard earlier results in `out_dir` first (even of other settings; see `check_run_settings`).
    stream: how a streaming benchmark's questions are streamed (default `StreamOptions()`).

    Returns the summary on the main process (also written to `<out_dir>/results.json`), None on the others.
    """
    out_dir = Path(out_dir)
    samples_dir = out_dir / "samples"
    if shard.is_main:
        check_run_settings(out_dir, settings, overwrite=overwrite)
        samples_dir.mkdir(parents=True, exist_ok=True)
        for sample in samples:  # a damaged record fails now, before any work, not after the last question
            if (samples_dir / f"{sample.id}.json").exists():
                read_record(samples_dir / f"{sample.id}.json")
    shard.wait()
    todo = [s for s in samples if not (samples_dir / f"{s.id}.json").exists()][shard.rank :: shard.world]
    desc = f"{benchmark.name} (process {shard.rank + 1}/{shard.world})"
    bar = tqdm(todo, desc=desc, disable=not progress or not shard.is_main)
    for sample in bar:
        record = answer(model, processor, benchmark, sample, press, num_frames, max_new_tokens, stream)
        _write_json(samples_dir / f"{sample.id}.json", {**record, "process": shard.rank})
    shard.wait()
    if not shard.is_main:
        return None
    records = [read_record(samples_dir / f"{s.id}.json") for s in samples]
    summary = benchmark.summarize(records)
    summary["settings"] = settings
    kept = [r["kept_tokens"] / r["visual_tokens"] for r in records if r.get("visual_tokens")]
    summary["effective_retention"] = sum(kept) / len(kept) if kept else float("nan")
    _write_json(out_dir / "results.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text report: overall accuracy, then one line per category value."""
    lines = [
        f"{summary['benchmark']}: accuracy {_pct(summary['accuracy'])} over {summary['samples']} questions"
        + (f" ({summary['errors']} unreadable videos counted wrong)" if summary["errors"] else "")
        + (f" ({summary['unparsed']} answers without an option letter counted wrong)" if summary.get("unparsed")
           else "")
        + f"; effective retention {summary['effective_retention']:.3f}"
    ]
    if "m_avg" in summary:
        lines.append(f"M-Avg (mean over tasks): {_pct(summary['m_avg'])}")
    if "total_avg" in summary:  # OVO-Bench: mode averages and the total, means over tasks
        modes = ", ".join(f"{mode} {_pct(value)}" for mode, value in summary["mode_avg"].items())
        lines.append(f"Total Avg. (mean over tasks): {_pct(summary['total_avg'])}; {modes}")
    for key, groups in summary["by"].items():
        lines.append(f"by {key}:")
        width = max(len(v) for v in groups) if groups else 0
        lines += [f"  {value.ljust(width)}  {_pct(g['accuracy'])}  ({g['samples']})" for value, g in groups.items()]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"
