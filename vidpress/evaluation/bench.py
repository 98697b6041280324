"""`vidpress bench`: every press at every retention on the synthetic test split, next to the full-token model.

Each video is encoded once; every press then sees the same features, and the LLM answers the multiple-choice
question in one prefill (the answer is the option letter with the highest logit at the last position). Besides
accuracy, each row reports evidence recall: the share of examples where the press kept at least one
answer-bearing token of every event the question needs (known from the renderer, no model involved).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vidpress import presses as press_registry
from vidpress.evaluation.memory import PeakMemory
from vidpress.loading import load_model
from vidpress.models import get_adapter
from vidpress.models.base import PIXEL_INPUTS
from vidpress.synthetic import QUESTION_FAMILIES, evidence_hits
from vidpress.synthetic.reference import (
    CACOVID_REFERENCE_DIR,
    MARC_REFERENCE_DIR,
    example_inputs,
    letter_token_ids,
    load_reference,
)

DEFAULT_RETENTIONS = (0.5, 0.25, 0.15, 0.10, 0.05)
FULL = "none"


@dataclass(frozen=True)
class BenchRow:
    """A bench row that is more than a registered press at a retention: the registered press it runs, its knobs
    besides the retention, and the model folder it runs on (None: the bench model). That model must share the
    bench model's vision tower (the videos are encoded once)."""

    press: str
    knobs: dict = field(default_factory=dict)
    model: Path | None = None


#: The learned rows, with the checkpoints shipped for the reference model, and "<host>+fca": every press that takes
#: VidCom²'s frame budgets, with them (frame_budgets="vidcom2").
BENCH_ROWS: dict[str, BenchRow] = {
    # the released allocation with its released knobs (imp_ratio 0.5, frame shares clipped to [0.5, 1.5] / T)
    "cacovid": BenchRow("cacovid", {"policy": CACOVID_REFERENCE_DIR}),
    # MarcPress on the shipped C-GRPO student
    "marc-cgrpo": BenchRow("marc", model=MARC_REFERENCE_DIR),
    **{name: BenchRow(host, {"frame_budgets": "vidcom2"}) for name, host in press_registry.fca_variants().items()},
}


def bench_names() -> list[str]:
    """Names `vidpress bench` accepts (and runs by default): the registered presses and the BENCH_ROWS entries."""
    return sorted(set(press_registry.available()) | set(BENCH_ROWS))


def checkpoint_free_names() -> list[str]:
    """What `vidpress bench --model DIR` runs by default: the registered presses that need no trained checkpoint (the
    BENCH_ROWS checkpoints belong to the shipped reference model)."""
    return [n for n in press_registry.available() if not press_registry.PRESSES[n].needs_policy]


def _row(name: str) -> BenchRow:
    return BENCH_ROWS.get(name, BenchRow(name))


def build_row(name: str, retention: float, model):
    """(press, model) of one bench row (see BENCH_ROWS), the press ready for that model (`post_init_from_model` ran,
    so a trained policy is loaded before the row is measured)."""
    row = _row(name)
    press = press_registry.get(row.press, retention=retention, **row.knobs)
    row_model = model if row.model is None else _row_model(name, row.model, model)
    press.post_init_from_model(row_model)
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


@dataclass
class EncodedBatch:
    """One batch of examples with its text inputs and its videos encoded once ([V] tuple of [N_v, D])."""

    examples: list
    inputs: dict
    video_output: object


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
        batches.append(EncodedBatch(chunk, {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}, output))
    return batches


def evaluate(model, batches: list[EncodedBatch], press, letter_ids: list[int]) -> dict:
    """Accuracy, evidence recall, kept tokens and timings of one press (None = all tokens) over the batches.

    Presses acting inside the LLM count the frame tokens its layers process on average (their effective
    retention); evidence recall uses what survives their last stage.
    """
    adapter = get_adapter(model)
    letters = torch.tensor(letter_ids, device=model.device)
    correct, hits, families = [], [], []
    kept = total = 0.0
    press_s = llm_s = 0.0
    with PeakMemory(model.device) as peak, torch.no_grad(), _applied(press, model) as pressed:
        for batch in batches:
            inputs = {**batch.inputs, "mm_encoder_outputs": {"video": batch.video_output}}
            start = time.perf_counter()
            if pressed is not None:
                inputs = pressed.prepare(inputs)
            press_s += time.perf_counter() - start
            start = time.perf_counter()
            with pressed.passthrough() if pressed is not None else contextlib.nullcontext():
                logits = model(**inputs, logits_to_keep=1).logits[:, -1]
            _sync(model.device)
            llm_s += time.perf_counter() - start
            if pressed is None:
                videos = [layout.tokens for layout in adapter.video_layouts(batch.video_output, inputs)]
                keeps = [torch.arange(video.num_tokens) for video in videos]
                retention = 1.0
            else:
                report = pressed.last_report
                videos, keeps, retention = report.videos, [s.keep_indices for s in report.selections], report.retention
            predictions = logits[:, letters].argmax(-1).tolist()
            for example, prediction, keep, video in zip(batch.examples, predictions, keeps, videos):
                correct.append(prediction == example.answer)
                hits.append(evidence_hits(keep, example, **_evidence_grid(example, video)))
                families.append(example.family)
                kept += retention * video.num_tokens
                total += video.num_tokens
    n = len(correct)
    by_family = {
        family: sum(c for c, f in zip(correct, families) if f == family) / families.count(family)
        for family in QUESTION_FAMILIES
        if family in families
    }
    return {
        "effective_retention": kept / total,
        "evidence_recall": sum(hits) / n,
        "accuracy": sum(correct) / n,
        "accuracy_by_family": by_family,
        "visual_tokens": kept / n,
        "press_ms": 1000 * press_s / n if press is not None else 0.0,
        "prefill_ms": 1000 * llm_s / n,
        "peak_mem_mb": peak.mb,
        "examples": n,
    }


def evaluate_settings(model, processor, examples, settings: dict, batch_size: int = 32, progress: bool = True) -> dict:
    """`evaluate` of several settings on the same examples, the videos encoded once with `model`: settings maps a
    name to a press (None: all tokens) or to (press, model) for a model sharing `model`'s vision tower.
    Returns {name: row}."""
    settings = {name: s if isinstance(s, tuple) else (s, model) for name, s in settings.items()}
    vision_stats = any(press is not None and press.needs_vision_stats for press, _ in settings.values())
    batches = encode(model, processor, examples, batch_size, progress, vision_stats)
    letter_ids = letter_token_ids(processor)
    return {name: evaluate(row_model, batches, press, letter_ids) for name, (press, row_model) in settings.items()}


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


def run_bench(model, processor, examples, press_names, retentions, batch_size: int = 32,
              progress: bool = True) -> list[dict]:
    """Rows for the full-token model and for every (press, retention); see the module docstring."""
    for name in press_names:
        if name not in bench_names():
            raise ValueError(f"unknown press {name!r}; available presses: {', '.join(bench_names())}")
    letter_ids = letter_token_ids(processor)
    vision_stats = any(press_registry.PRESSES[_row(name).press].needs_vision_stats for name in press_names)
    batches = encode(model, processor, examples, batch_size, progress, vision_stats)
    configs = [(FULL, 1.0)] + [(name, r) for name in press_names for r in retentions]
    rows = []
    for name, retention in tqdm(configs, desc="presses x retentions", disable=not progress):
        press, row_model = (None, model) if name == FULL else build_row(name, retention, model)
        rows.append({"press": name, "retention": retention, **evaluate(row_model, batches, press, letter_ids)})
    full_accuracy = rows[0]["accuracy"]
    for row in rows:
        row["relative_accuracy"] = row["accuracy"] / full_accuracy if full_accuracy else float("nan")
    return rows


FAMILY_SHORT = {"brief_event": "brief", "static": "static", "small_detail": "detail", "order": "order",
                "counting": "count", "query": "query"}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows, one line per (press, retention)."""
    families = [f for f in QUESTION_FAMILIES if any(f in r["accuracy_by_family"] for r in rows)]
    header = ["press", "R", "eff R", "recall", "acc", "% full"] + [FAMILY_SHORT.get(f, f) for f in families]
    header += ["tokens", "prefill ms", "peak MB"]
    lines = [header]
    for r in rows:
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        lines.append(
            [r["press"], f"{r['retention']:.2f}", f"{r['effective_retention']:.3f}", f"{r['evidence_recall']:.3f}",
             f"{r['accuracy']:.3f}", f"{100 * r['relative_accuracy']:.1f}"]
            + [f"{r['accuracy_by_family'].get(f, float('nan')):.2f}" for f in families]
            + [f"{r['visual_tokens']:.1f}", f"{r['prefill_ms']:.2f}", peak]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


RESULT_FILES = ("results.json", "results.csv", "accuracy.png")


def write_results(rows: list[dict], out_dir) -> dict[str, Path]:
    """Write results.json (the rows), results.csv (families as columns) and accuracy.png; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = dict(zip(("json", "csv", "plot"), (out / name for name in RESULT_FILES)))
    paths["json"].write_text(json.dumps(rows, indent=2))
    families = [f for f in QUESTION_FAMILIES if any(f in r["accuracy_by_family"] for r in rows)]
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        scalar = [k for k in rows[0] if k != "accuracy_by_family"]
        writer.writerow(scalar + [f"accuracy_{f}" for f in families])
        for r in rows:
            writer.writerow([r[k] for k in scalar] + [r["accuracy_by_family"].get(f) for f in families])
    plot(rows, paths["plot"])
    return paths


# One colour and one marker per press: the tab20 palette's dark shades first, then its light ones, each with its
# own marker, so no two presses share a colour or a marker up to 20 presses (then colour+marker stay unique).
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", "h", ">", "p", "d", "H", "8", "1", "2", "3", "4", "+")


def press_styles(names: list[str]) -> dict[str, dict]:
    """Matplotlib line styles {press: {"color", "marker"}}: distinct colours, and distinct markers up to 20."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # 10 dark shades, then the 10 light ones
    return {name: {"color": palette[order[i % 20]], "marker": _MARKERS[i % len(_MARKERS)]}
            for i, name in enumerate(names)}


def figure(rows: list[dict]):
    """The accuracy / evidence-recall figure: one line per press against effective retention, the full model dashed,
    one legend to the right of both plots (never over the data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next(r for r in rows if r["press"] == FULL)
    names = list(dict.fromkeys(r["press"] for r in rows if r["press"] != FULL))
    styles = press_styles(names)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4), layout="constrained")
    for ax, key, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "evidence_recall", "evidence recall")):
        for name in names:
            points = sorted((r["effective_retention"], r[key]) for r in rows if r["press"] == name)
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, markersize=5, linewidth=1.2,
                    **styles[name])
        ax.axhline(full[key], color="black", linestyle="--", linewidth=1, label="all tokens")
        ax.set_xscale("log")
        ticks = [0.05, 0.1, 0.15, 0.25, 0.5, 1.0]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("effective retention (kept / all visual tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"accuracy ({full['examples']} test examples)")
    axes[1].set_title("evidence recall (model-free)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="press")
    return fig


def plot(rows: list[dict], path) -> None:
    """Save `figure(rows)` as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)
