"""`vidpress bench --stream`: the synthetic world's streams through `VideoStream`, accuracy and evidence recall
against the memory budget for every memory policy (and per-chunk press), next to the offline full-video answer.

Each stream (`vidpress.synthetic.stream_world`) is fed to a fresh `VideoStream` in chunks of `chunk_frames` frames
at its own clock; after the chunk that ends at a question's time the question is scored from the stream's cache
(the answer is the option letter with the highest logit at the question's last position, the memory policy's
recall included) and its evidence is checked model-free: does the memory the question sees (the cached visual
tokens, plus the chunks a "recall" policy brought back) still hold at least one token of every event the answer
needs? The offline row answers each question from one forward over the whole video up to the question's time,
where that prompt fits the model's context.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vidpress.evaluation.stats import wilson_interval
from vidpress.inputs import build_inputs
from vidpress.synthetic.reference import letter_token_ids
from vidpress.synthetic.stream_world import STREAM_KINDS, StreamExample, stream_evidence_hits

#: Defaults of `vidpress bench --stream`: memory budgets (visual tokens; the reference model was trained on 128-token
#: clips), chunk length (frames; 4 frames = 2 temporal tokens = 32 visual tokens of the reference model, 0.5 s).
DEFAULT_MEMORY_TOKENS = (32, 64, 128)
DEFAULT_STREAMS = 30
DEFAULT_CHUNK_FRAMES = 4
OFFLINE = "offline"


@dataclass(frozen=True)
class StreamSetting:
    """One bench row: a per-chunk press (None: every token) at `retention`, a memory policy and a cap (None:
    unbounded)."""

    press: str | None
    retention: float | None
    policy: str
    memory_tokens: int | None

    @property
    def label(self) -> str:
        press = "none" if self.press is None else self.press
        press += "" if self.retention is None else f"@{self.retention:g}"
        memory = "unbounded" if self.memory_tokens is None else str(self.memory_tokens)
        return f"{press}/{self.policy}/{memory}"


def settings_grid(presses: list[str | None], policies: list[str], memory_tokens: list[int | None],
                  retentions: list[float | None] = (None,)) -> list[StreamSetting]:
    """Every press (at every retention; None: no press, once) x budget x policy; an unbounded budget runs once per
    press and retention (no policy ever acts there)."""
    out = []
    for press in presses:
        for retention in [None] if press is None else retentions:
            for memory in memory_tokens:
                for policy in [policies[0]] if memory is None else policies:
                    out.append(StreamSetting(press, retention, policy, memory))
    return out


def build_stream(model, processor, setting: StreamSetting):
    """The `VideoStream` of one setting (reset before every example)."""
    from vidpress.streaming import VideoStream

    return VideoStream(model, processor, press=setting.press, retention=setting.retention,
                       memory_tokens=setting.memory_tokens, policy=setting.policy)


def stream_records(stream, example: StreamExample, chunk_frames: int, index: int) -> list[dict]:
    """Reset `stream` and feed it `example` in chunks of `chunk_frames` frames; one record per question, scored
    after the chunk that ends at its time."""
    if example.config.segment_frames % chunk_frames:
        raise ValueError(f"chunk_frames {chunk_frames} must divide the stream's segment_frames "
                         f"{example.config.segment_frames} (questions are asked at segment ends)")
    letters = letter_token_ids(stream.processor)
    stream.reset()
    seconds = example.timestamps()
    pending = list(example.questions)
    records = []
    for start in range(0, len(example.video), chunk_frames):
        end = start + chunk_frames
        stream.append(example.video[start:end], seconds[start:end])
        while pending and pending[0].frame == end:
            q = pending.pop(0)
            logits = stream.question_logits(q.question, recall=True)[-1, letters]
            prediction = int(logits.argmax())
            records.append({
                "stream": index, "seed": example.seed, "kind": q.kind, "time": q.time, "answer": q.answer,
                "prediction": prediction, "correct": prediction == q.answer,
                "evidence": stream_evidence_hits(stream.last_question_origins, q),
                "visual_tokens": int(stream.last_question_origins.numel()),
            })
    if pending:
        raise RuntimeError(f"vidpress: {len(pending)} questions of stream {index} were never reached")
    stats = stream.stats()
    for record in records:
        record["ms_per_chunk"] = stats["ms_per_chunk_median"]
    return records


def offline_records(model, processor, example: StreamExample, index: int, context: int) -> list[dict]:
    """Each question answered from one forward over frames [0, t) as one video (the offline call); a prompt longer
    than `context` tokens is recorded as not fitting (prediction None)."""
    letters = letter_token_ids(processor)
    records = []
    for q in example.questions:
        inputs = build_inputs(processor, [q.question], [[example.video[: q.frame]]], fps=example.fps)
        length = int(inputs["input_ids"].shape[1])
        record = {"stream": index, "seed": example.seed, "kind": q.kind, "time": q.time, "answer": q.answer,
                  "prompt_tokens": length, "evidence": True}
        if length > context:
            record.update(prediction=None, correct=None)
        else:
            inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1, letters]
            record.update(prediction=int(logits.argmax()), correct=int(logits.argmax()) == q.answer)
        records.append(record)
    return records


def summarise(label: str, setting: StreamSetting | None, records: list[dict], seconds: float) -> dict:
    """One table row: accuracy (with its 95% Wilson interval) and evidence recall, overall and per question kind,
    the visual tokens a question saw (mean) and the median ms per chunk."""
    scored = [r for r in records if r["correct"] is not None]
    row = {"setting": label, "press": None if setting is None else setting.press,
           "retention": None if setting is None else setting.retention,
           "policy": OFFLINE if setting is None else setting.policy,
           "memory_tokens": None if setting is None else setting.memory_tokens,
           "questions": len(records), "scored": len(scored), "seconds": round(seconds, 1)}
    correct = sum(r["correct"] for r in scored)
    row["accuracy"] = correct / len(scored) if scored else None
    row["accuracy_ci95"] = list(wilson_interval(correct, len(scored))) if scored else None
    row["evidence_recall"] = sum(r["evidence"] for r in records) / len(records)
    for kind in STREAM_KINDS:
        mine = [r for r in scored if r["kind"] == kind]
        row[f"accuracy_{kind}"] = sum(r["correct"] for r in mine) / len(mine) if mine else None
        row[f"evidence_{kind}"] = (sum(r["evidence"] for r in records if r["kind"] == kind)
                                   / max(1, sum(r["kind"] == kind for r in records)))
    if setting is not None:
        row["visual_tokens_mean"] = statistics.fmean(r["visual_tokens"] for r in records)
        row["ms_per_chunk_median"] = statistics.median(r["ms_per_chunk"] for r in records)
    else:
        row["prompt_tokens_max"] = max(r["prompt_tokens"] for r in records)
    return row


def run_stream_bench(model, processor, examples: list[StreamExample], settings: list[StreamSetting], *,
                     chunk_frames: int = DEFAULT_CHUNK_FRAMES, context: int | None = None, offline: bool = True,
                     progress: bool = True, on_row=None) -> tuple[list[dict], list[dict]]:
    """(rows, records): the offline row first (when `offline`), then one row per setting; `on_row(row)` is called as
    each finishes. `context`: the longest offline prompt (default: the model's max_position_embeddings)."""
    rows, records = [], []
    if context is None:
        config = getattr(model.config, "text_config", model.config)
        context = int(getattr(config, "max_position_embeddings", 0) or 0) or 10**9
    jobs = ([None] if offline else []) + list(settings)
    for setting in jobs:
        label = OFFLINE if setting is None else setting.label
        start, mine = time.perf_counter(), []
        stream = None if setting is None else build_stream(model, processor, setting)
        for i, example in enumerate(tqdm(examples, desc=label, disable=not progress, leave=False)):
            if setting is None:
                mine += offline_records(model, processor, example, i, context)
            else:
                mine += stream_records(stream, example, chunk_frames, i)
        row = summarise(label, setting, mine, time.perf_counter() - start)
        for record in mine:
            record["setting"] = label
        rows.append(row)
        records += mine
        if on_row is not None:
            on_row(row)
    return rows, records


def _cell(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_stream_table(rows: list[dict]) -> str:
    """A markdown table: one line per row, accuracy [95% CI], per-kind accuracy, evidence recall (overall and per
    kind), visual tokens a question saw, ms per chunk."""
    kinds = " | ".join(f"acc {k}" for k in STREAM_KINDS)
    ev = " | ".join(f"ev {k}" for k in STREAM_KINDS)
    lines = [f"| press | policy | memory | accuracy [95% CI] | {kinds} | evidence recall | {ev} | tokens seen | "
             "ms/chunk |", "|" + "---|" * (7 + 2 * len(STREAM_KINDS))]
    for r in rows:
        press = "-" if r["policy"] == OFFLINE else (r["press"] or "none") + (
            "" if r["retention"] is None else f"@{r['retention']:g}")
        memory = "all" if r["memory_tokens"] is None else str(r["memory_tokens"])
        ci = r["accuracy_ci95"]
        acc = "-" if r["accuracy"] is None else f"**{r['accuracy']:.3f}** [{ci[0]:.2f}, {ci[1]:.2f}]"
        tokens = _cell(r.get("visual_tokens_mean"), 0) if r["policy"] != OFFLINE else f"{r['prompt_tokens_max']} max"
        lines.append(f"| {press} | {r['policy']} | {memory} | {acc} | "
                     + " | ".join(_cell(r[f"accuracy_{k}"]) for k in STREAM_KINDS)
                     + f" | {_cell(r['evidence_recall'])} | "
                     + " | ".join(_cell(r[f"evidence_{k}"]) for k in STREAM_KINDS)
                     + f" | {tokens} | {_cell(r.get('ms_per_chunk_median'), 1)} |")
    return "\n".join(lines)


def plot_stream(rows: list[dict], path) -> None:
    """Accuracy and evidence recall against the memory budget: one line per (press, policy), the offline answer
    dashed, chance dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidpress.evaluation.testbed_plots import CHANCE, press_styles

    bounded = [r for r in rows if r["policy"] != OFFLINE and r["memory_tokens"] is not None]
    groups = list(dict.fromkeys((r["press"] or "none", r["policy"]) for r in bounded))
    styles = press_styles([f"{p}/{q}" for p, q in groups])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "evidence_recall", "evidence recall")):
        for press, policy in groups:
            line = sorted((r for r in bounded if (r["press"] or "none", r["policy"]) == (press, policy)),
                          key=lambda r: r["memory_tokens"])
            name = f"{press}/{policy}"
            ax.plot([r["memory_tokens"] for r in line], [r[key] for r in line], label=name, **styles[name])
        for r in rows:
            if r["policy"] == OFFLINE and key == "accuracy" and r["accuracy"] is not None:
                ax.axhline(r["accuracy"], color="black", linestyle="--", label="offline, whole video")
            elif r["policy"] != OFFLINE and r["memory_tokens"] is None:
                ax.axhline(r[key], color="grey", linestyle="-.", label=f"{r['press'] or 'none'}, unbounded memory")
        if key == "accuracy":
            ax.axhline(CHANCE, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("memory budget (visual tokens)")
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.82, 0.5), fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.81, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_stream_results(rows: list[dict], records: list[dict], out, meta: dict) -> dict:
    """results.json (meta, rows), predictions.jsonl (one record per question and setting), results.md (the table)
    and accuracy.png in `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "predictions": out / "predictions.jsonl",
             "table": out / "results.md", "plot": out / "accuracy.png"}
    paths["results"].write_text(json.dumps({"run": meta, "rows": rows}, indent=1) + "\n")
    paths["predictions"].write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["table"].write_text(format_stream_table(rows) + "\n")
    plot_stream(rows, paths["plot"])
    return paths
