"""The synthetic world's evaluation loop (`vidpress bench`): presses x retentions on the synthetic video-QA split,
next to the full-token model.

Each video is encoded once; every press then sees the same features, and the LLM answers the multiple-choice
question in one prefill (the answer is the option letter with the highest logit at the last position). Besides
accuracy, each row reports evidence recall: the share of examples where the press kept at least one
answer-bearing token of every event the question needs (known from the renderer, no model involved).

Each (press, retention) runs once per example. A press asked for less than its floor (`Press.min_retention` on
every video of the run) is met at that floor, so it gives the same answers at every such retention: it runs at
the first of them and the others copy that row (`at_floor`).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vidpress import presses as press_registry
from vidpress.evaluation.marc_vmr import EpisodicMarcPress
from vidpress.evaluation.memory import PeakMemory
from vidpress.evaluation.profiler import flop_counter
from vidpress.evaluation.stats import wilson_interval
from vidpress.loading import load_model
from vidpress.models import get_adapter
from vidpress.models.sequence import PIXEL_INPUTS
from vidpress.synthetic import QUESTION_FAMILIES, evidence_hits, known_families, make_split
from vidpress.synthetic.reference import (
    CACOVID_REFERENCE_DIR,
    MARC_LONG_REFERENCE_DIR,
    MARC_REFERENCE_DIR,
    example_inputs,
    letter_token_ids,
    load_reference,
)
from vidpress.synthetic.world import LETTERS

#: `vidpress bench --full`: the retentions of the full grid, on the first FULL_EXAMPLES test examples.
DEFAULT_RETENTIONS = (0.5, 0.25, 0.15, 0.10, 0.05)
FULL_EXAMPLES = 600
#: `vidpress bench` (the quick job): three retentions on a stratified subset of the full grid's examples,
#: QUICK_PER_FAMILY per question family drawn with QUICK_SEED (docs/benchmarks.md justifies the size).
QUICK_RETENTIONS = (0.5, 0.25, 0.10)
QUICK_PER_FAMILY = 40
QUICK_SEED = 0
FULL = "none"
#: `vidpress bench --family long`: the first LONG_EXAMPLES long-family test examples at LONG_RETENTIONS.
#: 1/64 = one frame's tokens of a 128-frame clip (64 temporal tokens of 4): MARC's budget.
LONG_EXAMPLES = 240
LONG_RETENTIONS = (1 / 16, 1 / 64)


@dataclass(frozen=True)
class BenchRow:
    """A bench row that is more than a registered press at a retention: the registered press it runs, its knobs
    besides the retention, and the model folder it runs on (None: the bench model). That model must share the
    bench model's vision tower (the videos are encoded once). pipeline: a Press class built instead of the
    registered press, for a row that wraps it in more than knobs (marc-vmr: retrieval before the encoder).
    family: the one family the row is made for (default runs: only with `--family` that family)."""

    press: str
    knobs: dict = field(default_factory=dict)
    model: Path | None = None
    pipeline: type | None = None
    family: str | None = None


#: The learned rows, with the checkpoints shipped for the reference model, and "<host>+fca": every press that takes
#: VidCom²'s frame budgets, with them (frame_budgets="vidcom2").
BENCH_ROWS: dict[str, BenchRow] = {
    # the released allocation with its released knobs (imp_ratio 0.5, frame shares clipped to [0.5, 1.5] / T)
    "cacovid": BenchRow("cacovid", {"policy": CACOVID_REFERENCE_DIR}),
    # MarcPress on the shipped C-GRPO student
    "marc-cgrpo": BenchRow("marc", model=MARC_REFERENCE_DIR),
    # MARC as released: the dual encoder trained on the long family retrieves 3 clips before the encoder, then
    # MarcPress merges them (vidpress.evaluation.marc_vmr)
    "marc-vmr": BenchRow("marc", pipeline=EpisodicMarcPress, family="long"),
    # ... on the C-GRPO student trained through that retrieval on the long family
    "marc-vmr-cgrpo": BenchRow("marc", pipeline=EpisodicMarcPress, model=MARC_LONG_REFERENCE_DIR, family="long"),
    **{name: BenchRow(host, {"frame_budgets": "vidcom2"}) for name, host in press_registry.fca_variants().items()},
}


def bench_names() -> list[str]:
    """Names `vidpress bench` accepts: the registered presses and the BENCH_ROWS entries ("<host>+fca" included)."""
    return sorted(set(press_registry.available()) | set(BENCH_ROWS))


def default_names(family: str | None = None) -> list[str]:
    """What `vidpress bench` runs without --presses: every registered press and the learned rows; the "<host>+fca"
    compositions only when asked for (`--presses fastv,fastv+fca`), so the default run stays one row per method.
    family "long" (`--family long`): without the rows that run their own model (the students were trained on the six
    short families); the rows made for one family (`BenchRow.family`) only with that family."""
    variants = press_registry.fca_variants()

    def runs(row: BenchRow) -> bool:
        if family is None or row.family is not None:
            return row.family == family
        return row.model is None

    return [name for name in bench_names() if name not in variants and runs(_row(name))]


def checkpoint_free_names() -> list[str]:
    """What `vidpress bench --model DIR` runs by default: the registered presses that need no trained checkpoint (the
    BENCH_ROWS checkpoints belong to the shipped reference model)."""
    return [n for n in press_registry.available() if not press_registry.PRESSES[n].needs_policy]


def press_class(name: str) -> type:
    """The press class behind bench row `name` (its declared flags)."""
    row = _row(name)
    return row.pipeline or press_registry.PRESSES[row.press]


def _row(name: str) -> BenchRow:
    return BENCH_ROWS.get(name, BenchRow(name))


def build_row(name: str, retention: float, model):
    """(press, model) of one bench row (see BENCH_ROWS). The press is applied with `press(row_model)` like any
    other, which loads what it needs from the model (a trained policy) on entry."""
    row = _row(name)
    if row.pipeline is not None:
        press = row.pipeline(retention=retention, **row.knobs)
    else:
        press = press_registry.get(row.press, retention=retention, **row.knobs)
    row_model = model if row.model is None else _row_model(name, row.model, model)
    return press, row_model


@functools.lru_cache(maxsize=4)
def _load_row_model(path: Path):
    return load_reference(path)[0]


def _row_model(name: str, path: Path, model):
    """The model of row `name` at `path`, on `model`'s device, after checking it has `model`'s vision tower."""
    row_model = _load_row_model(Path(path)).to(model.device)
    mine, theirs = row_model.model.visual.state_dict(), model.model.visual.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k].to(mine[k].device)) for k in mine):
        raise ValueError(f"the model of bench row {name} at {path} has another vision tower than the bench model; "
                         "bench it with the reference model it was trained from")
    return row_model


def load_bench_model(path: str | None, device: str):
    """The shipped reference model, or a local model directory."""
    if path is None:
        model, processor = load_reference()
        return model.to(device), processor
    return load_model(path, "sdpa", device, "auto")


def quick_indices(per_family: int = QUICK_PER_FAMILY, seed: int = QUICK_SEED, pool: int = FULL_EXAMPLES) -> list[int]:
    """Split indices of the quick bench: `per_family` examples of every question family, drawn without replacement
    by `seed` from the first `pool` examples (the full grid's), sorted. Example i asks family i % 6
    (`make_split`), so every family has pool / 6 candidates."""
    families = len(QUESTION_FAMILIES)
    if per_family < 1 or per_family * families > pool:
        raise ValueError(f"per_family must be in [1, {pool // families}] for a pool of {pool}; got {per_family}")
    rng = np.random.default_rng(seed)
    chosen = []
    for f in range(families):
        candidates = np.arange(f, pool, families)
        chosen.extend(rng.choice(candidates, size=per_family, replace=False).tolist())
    return sorted(chosen)


def examples_at(split: str, indices: Iterable[int], families=QUESTION_FAMILIES) -> list:
    """The examples of `split` at these indices (the same examples `make_split` gives at those places)."""
    return [make_split(split, 1, families=families, start=i)[0] for i in indices]


@dataclass
class EncodedBatch:
    """One batch of examples with its text inputs, its videos encoded once ([V] tuple of [N_v, D]) and the frame
    count of each video's token grid."""

    examples: list
    inputs: dict
    video_output: object
    num_frames: list[int]


def encode(model, processor, examples, batch_size: int, progress: bool = True,
           vision_stats: bool = False) -> list[EncodedBatch]:
    """Run the processor and the vision encoder once per batch; pixels are dropped afterwards. With `vision_stats`,
    the default vision layer's attention statistics are recorded too (presses with `needs_vision_stats`)."""
    adapter = get_adapter(model)
    batches = []
    for start in tqdm(range(0, len(examples), batch_size), desc="encoding videos", disable=not progress):
        chunk = examples[start : start + batch_size]
        inputs = dict(example_inputs(processor, chunk).to(model.device))
        with torch.no_grad():
            output = adapter.encode_with_vision_stats(inputs) if vision_stats else adapter.encode("video", inputs)
        text = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}
        frames = [layout.tokens.num_frames for layout in adapter.video_layouts(output, text)]
        batches.append(EncodedBatch(chunk, text, output, frames))
    return batches


@dataclass
class Outcome:
    """One setting over all batches: the bench row and one record per example (see `Outcome.records`)."""

    row: dict
    records: list[dict]


def evaluate(model, batches: list[EncodedBatch], press, letter_ids: list[int]) -> dict:
    """Accuracy, evidence recall, kept tokens and timings of one press (None = all tokens) over the batches
    (the row of `evaluate_outcome`)."""
    return evaluate_outcome(model, batches, press, letter_ids).row


def evaluate_outcome(model, batches: list[EncodedBatch], press, letter_ids: list[int]) -> Outcome:
    """One press (None = all tokens) over the batches: the row and the per-example records.

    Presses acting inside the LLM count the frame tokens its layers process on average (their effective
    retention); evidence recall and a record's `kept_tokens` use what survives their last stage.
    Timings: the first batch is the warm-up (run and scored, its FLOPs counted, not timed) when there are two or
    more; press_ms and prefill_ms are the median over the other batches of the per-example time, *_spread their
    [25%, 75%] quantiles; flops: press + LLM prefill FLOPs per example, counted on the first batch.
    """
    adapter = get_adapter(model)
    letters = torch.tensor(letter_ids, device=model.device)
    records = []
    kept = total = 0.0
    press_times, llm_times = [], []
    with PeakMemory(model.device) as peak, torch.no_grad(), _applied(press, model) as pressed:
        for number, batch in enumerate(batches):
            inputs = {**batch.inputs, "mm_encoder_outputs": {"video": batch.video_output}}
            # The warm-up batch counts the FLOPs of the press and the prefill (the counter slows what it counts).
            counter = flop_counter() if number == 0 else contextlib.nullcontext()
            with counter:
                start = time.perf_counter()
                if isinstance(press, EpisodicMarcPress):  # its retrieval reads the frames and the question text
                    press.begin_batch(batch.examples)
                if pressed is not None:
                    inputs = pressed.prepare(inputs)
                press_s = time.perf_counter() - start
                start = time.perf_counter()
                with pressed.passthrough() if pressed is not None else contextlib.nullcontext():
                    logits = model(**inputs, logits_to_keep=1).logits[:, -1]
                _sync(model.device)
                llm_s = time.perf_counter() - start
            if number == 0:
                flops = counter.get_total_flops() / len(batch.examples)
            if number > 0 or len(batches) == 1:
                press_times.append(press_s / len(batch.examples))
                llm_times.append(llm_s / len(batch.examples))
            if pressed is None:
                videos = [layout.tokens for layout in adapter.video_layouts(batch.video_output, inputs)]
                keeps = [torch.arange(video.num_tokens) for video in videos]
                retention = 1.0
            else:
                report = pressed.last_report
                videos, keeps, retention = report.videos, [s.keep_indices for s in report.selections], report.retention
            predictions = logits[:, letters].argmax(-1).tolist()
            for example, prediction, keep, video in zip(batch.examples, predictions, keeps, videos):
                records.append({
                    "example": example.seed, "family": example.family, "answer": LETTERS[prediction],
                    "correct": prediction == example.answer, "kept_tokens": int(keep.numel()),
                    "evidence": evidence_hits(keep, example, **_evidence_grid(example, video)),
                })
                kept += retention * video.num_tokens
                total += video.num_tokens
    row = summarize(records)
    row.update({
        "effective_retention": kept / total,
        "visual_tokens": kept / len(records),
        "press_ms": 1000 * statistics.median(press_times) if press is not None else 0.0,
        "press_ms_spread": [1000 * q for q in _quartiles(press_times)] if press is not None else [0.0, 0.0],
        "prefill_ms": 1000 * statistics.median(llm_times),
        "prefill_ms_spread": [1000 * q for q in _quartiles(llm_times)],
        "peak_mem_mb": peak.mb,
        "flops": flops,
    })
    return Outcome(row, records)


def summarize(records: list[dict]) -> dict:
    """Accuracy and evidence recall of per-example records, overall and per family, with 95% Wilson intervals."""
    n = len(records)
    correct = sum(r["correct"] for r in records)
    families = [f for f in known_families() if any(r["family"] == f for r in records)]
    by_family, by_family_ci, counts = {}, {}, {}
    for family in families:
        mine = [r["correct"] for r in records if r["family"] == family]
        by_family[family], counts[family] = sum(mine) / len(mine), len(mine)
        by_family_ci[family] = list(wilson_interval(sum(mine), len(mine)))
    hits = sum(r["evidence"] for r in records)
    return {
        "evidence_recall": hits / n,
        "evidence_recall_ci": list(wilson_interval(hits, n)),
        "accuracy": correct / n,
        "accuracy_ci": list(wilson_interval(correct, n)),
        "accuracy_by_family": by_family,
        "accuracy_by_family_ci": by_family_ci,
        "examples": n,
        "examples_by_family": counts,
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def evaluate_settings(model, processor, examples, settings: dict, batch_size: int = 32, progress: bool = True) -> dict:
    """`evaluate` of several settings on the same examples, the videos encoded once with `model`: settings maps a
    name to a press (None: all tokens) or to (press, model) for a model sharing `model`'s vision tower.
    Returns {name: row}. progress: bars over the encoding and over the settings."""
    settings = {name: s if isinstance(s, tuple) else (s, model) for name, s in settings.items()}
    vision_stats = any(press is not None and press.needs_vision_stats for press, _ in settings.values())
    batches = encode(model, processor, examples, batch_size, progress, vision_stats)
    letter_ids = letter_token_ids(processor)
    bar = tqdm(settings.items(), desc="evaluating settings", disable=not progress)
    return {name: evaluate(row_model, batches, press, letter_ids) for name, (press, row_model) in bar}


def _applied(press, model):
    """`press(model)`, or a null context yielding None for the full-token row."""
    return press(model) if press is not None else contextlib.nullcontext()


def _evidence_grid(example, tokens) -> dict:
    """How the example's pixels map onto the model's token grid: frames per token and pixels per cell."""
    frames, height, _ = example.video.shape[:3]
    t, h, _ = tokens.grid
    return {"temporal_patch": frames // t, "cell": height // h}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def check_names(press_names: list[str]) -> None:
    for name in press_names:
        if name not in bench_names():
            raise ValueError(f"unknown press {name!r}; available presses: {', '.join(bench_names())}")


def settings_of(press_names: list[str], retentions: list[float]) -> list[tuple[str, float]]:
    """The rows of a run, in order: the full-token model, then every press at every retention."""
    return [(FULL, 1.0)] + [(name, r) for name in press_names for r in retentions]


def floor_of(press, model, batches: list[EncodedBatch]) -> float:
    """The lowest retention press `name` reaches on every video of the batches (`Press.min_retention`): the largest
    of its per-video floors."""
    layers = model.config.get_text_config().num_hidden_layers
    frames = {t for batch in batches for t in batch.num_frames}
    return max(press.min_retention(t, layers) for t in frames)


def run_grid(model, processor, examples, press_names, retentions, batch_size: int = 32, progress: bool = True,
             done: dict | None = None, on_row: Callable[[dict, list[dict]], None] | None = None,
             workers: int = 1) -> dict:
    """{(press, retention): (row, records)} for the full-token model and every (press, retention), in run order.

    done: rows already measured, in the same form (a resumed run); they are not run again. on_row(row, records)
    is called as each new row finishes (in the order they finish). records: one dict per example
    (`evaluate_outcome`, plus press and retention). A press asked for less than its floor runs at the first such
    retention; the others copy it. workers > 1: the rows run in that many forked processes of one torch thread
    each (the videos are encoded once, here, before the fork); the answers do not depend on it.
    """
    check_names(press_names)
    configs = settings_of(press_names, retentions)
    results = {c: done[c] for c in configs if done and c in done}
    todo = [c for c in configs if c not in results]
    if not todo:
        return {c: results[c] for c in configs}
    letter_ids = letter_token_ids(processor)
    vision_stats = any(press_class(name).needs_vision_stats for name, _ in todo if name != FULL)
    batches = encode(model, processor, examples, batch_size, progress, vision_stats)
    floors = {}
    for name in dict.fromkeys(name for name, _ in todo):
        if name == FULL:
            floors[name] = 0.0
        else:
            press, row_model = build_row(name, max(retentions), model)
            floors[name] = floor_of(press, row_model, batches)
    copies = {}  # a row at its press's floor -> the row it copies
    for name, retention in todo:
        below = [r for r in retentions if r < floors[name]]
        if retention in below:
            source = next(((name, r) for r in below if (name, r) in results), (name, below[0]))
            if source != (name, retention):
                copies[(name, retention)] = source
    runs = [c for c in todo if c not in copies]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="presses x retentions",
               disable=not progress)

    def finish(key, row, records):
        name, retention = key
        row = {"press": name, "retention": retention,
               **{k: v for k, v in row.items() if k not in ("press", "retention")},
               "floor": floors[name], "at_floor": retention < floors[name]}
        records = [{**r, "press": name, "retention": retention} for r in records]
        results[key] = (row, records)
        if on_row is not None:
            on_row(row, records)
        bar.update()
        for copy, source in list(copies.items()):
            # pop: a copy finished by the recursive call of an earlier copy is gone from `copies` by now
            if source in results and copies.pop(copy, None) is not None:
                finish(copy, results[source][0], results[source][1])

    for key in [c for c, source in copies.items() if source in results]:  # copies of rows done before
        if key in copies:
            finish(key, *results[copies.pop(key)])
    for key, (row, records) in _run_rows(model, batches, letter_ids, runs, workers):
        bar.set_postfix_str(f"{key[0]} {key[1]:g}")
        finish(key, row, records)
    bar.close()
    return {c: results[c] for c in configs}


# The state a forked worker of `_run_rows` reads (set just before the fork; never pickled).
_WORKER_STATE: dict = {}


def _run_row(key):
    """One row's outcome: (key, (row, records)); in a worker or in this process."""
    name, retention = key
    model, batches, letter_ids = _WORKER_STATE["model"], _WORKER_STATE["batches"], _WORKER_STATE["letter_ids"]
    press, row_model = (None, model) if name == FULL else build_row(name, retention, model)
    outcome = evaluate_outcome(row_model, batches, press, letter_ids)
    return key, (outcome.row, outcome.records)


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    torch.set_num_threads(1)


def _run_rows(model, batches, letter_ids, keys, workers: int):
    """Yield (key, (row, records)) for every key, from `workers` forked processes or (workers == 1) here."""
    _WORKER_STATE.update(model=model, batches=batches, letter_ids=letter_ids)
    try:
        if workers <= 1 or len(keys) <= 1:
            for key in keys:
                yield _run_row(key)
            return
        import multiprocessing

        if torch.get_num_threads() > 1:
            raise ValueError("forked workers need this process at one torch thread (a fork after a multi-threaded "
                             "OpenMP region can hang); call torch.set_num_threads(1) first or use workers=1")
        with multiprocessing.get_context("fork").Pool(min(workers, len(keys)), initializer=_init_worker) as pool:
            yield from pool.imap_unordered(_run_row, keys)
    finally:
        _WORKER_STATE.clear()


def run_bench(model, processor, examples, press_names, retentions, batch_size: int = 32,
              progress: bool = True) -> list[dict]:
    """The rows of `run_grid` in order, each with its accuracy relative to the full-token row."""
    results = run_grid(model, processor, examples, press_names, retentions, batch_size, progress)
    return with_relative_accuracy([row for row, _ in results.values()])


def with_relative_accuracy(rows: list[dict]) -> list[dict]:
    """Add relative_accuracy = accuracy / the full-token row's accuracy (rows[0]) to every row."""
    full_accuracy = rows[0]["accuracy"]
    for row in rows:
        row["relative_accuracy"] = row["accuracy"] / full_accuracy if full_accuracy else float("nan")
    return rows
