"""Accuracy of encoder reuse (`encoder_reuse_threshold`, vidpress.serving.encoder_reuse) on the synthetic testbed.

The reference model (the shipped Qwen2.5-VL testbed model) answers the testbed's questions with each press at one
retention, once on the plain encoder output and once per threshold on the reused output (unchanged temporal
groups copy their reference group's features; `transformers_video_features`, the offline twin of the vLLM
option). The press, its retention and so its kept count are the same in both; only the features differ. Reported
per (press, threshold): accuracy and evidence recall with 95 % Wilson intervals, the examples whose answer
changed against the plain encoder, and the share of temporal groups not encoded.

    python benchmarks/encoder_reuse_accuracy.py                        # quick subset, evs + vidcom2 at 0.25
    python benchmarks/encoder_reuse_accuracy.py --examples 600 --presses evs --thresholds 0.05 0.1 0.2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vidpress import presses
from vidpress.evaluation.testbed import EncodedBatch, evaluate_outcome, examples_at, quick_indices
from vidpress.models import get_adapter
from vidpress.models.sequence import PIXEL_INPUTS
from vidpress.serving.encoder_reuse import transformers_video_features
from vidpress.synthetic.reference import example_inputs, letter_token_ids, load_reference


def encode_batches(model, processor, examples, thresholds, batch_size):
    """{threshold (None: plain): [EncodedBatch]} and {threshold: share of temporal groups reused}."""
    adapter = get_adapter(model)
    batches = {None: [], **{t: [] for t in thresholds}}
    reused = {t: [0, 0] for t in thresholds}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = dict(example_inputs(processor, chunk))
        with torch.no_grad():
            plain = adapter.encode("video", inputs)
            text = {k: v for k, v in inputs.items() if k not in PIXEL_INPUTS}
            frames = [layout.tokens.num_frames for layout in adapter.video_layouts(plain, text)]
            batches[None].append(EncodedBatch(chunk, text, plain, frames))
            for threshold in thresholds:
                features, plans = transformers_video_features(
                    model, inputs["pixel_values_videos"], inputs["video_grid_thw"], threshold)
                output = type(plain)(**{**plain, "pooler_output": features})
                batches[threshold].append(EncodedBatch(chunk, text, output, frames))
                reused[threshold][0] += sum(int((p != torch.arange(len(p))).sum()) for p in plans)
                reused[threshold][1] += sum(len(p) for p in plans)
    return batches, {t: skipped / total for t, (skipped, total) in reused.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presses", nargs="+", default=["evs", "vidcom2"])
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--examples", default="quick",
                        help="'quick' (the quick bench's stratified 240 test examples) or a count N (test 0..N-1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.presses if presses.press_key(name) not in presses.PRESSES]
    if unknown:
        parser.error(f"unknown press(es) {unknown}; available: {', '.join(presses.available())}")
    if any(t < 0 for t in args.thresholds):
        parser.error("--thresholds must be >= 0")
    indices = quick_indices() if args.examples == "quick" else range(int(args.examples))
    examples = examples_at("test", indices)
    model, processor = load_reference()
    letters = letter_token_ids(processor)
    batches, shares = encode_batches(model, processor, examples, args.thresholds, args.batch_size)
    rows = []
    print(f"{len(examples)} test examples, retention {args.retention}\n")
    print("| press | encoder_reuse_threshold | groups reused | accuracy [95 % CI] | evidence recall | answers "
          "changed |\n|---|---:|---:|---:|---:|---:|")
    for name in args.presses:
        press = presses.get(name, retention=args.retention)
        plain = evaluate_outcome(model, batches[None], press, letters)
        answers = {r["example"]: r["answer"] for r in plain.records}
        for threshold in [None, *args.thresholds]:
            outcome = plain if threshold is None else evaluate_outcome(model, batches[threshold], press, letters)
            row = outcome.row
            changed = sum(r["answer"] != answers[r["example"]] for r in outcome.records)
            share = 0.0 if threshold is None else shares[threshold]
            lo, hi = row["accuracy_ci"]
            print(f"| {name} | {'off' if threshold is None else threshold} | {100 * share:.0f} % | "
                  f"{100 * row['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                  f"{100 * row['evidence_recall']:.1f} | {changed} |", flush=True)
            rows.append({"press": name, "threshold": threshold, "groups_reused": share, "answers_changed": changed,
                         "accuracy": row["accuracy"], "accuracy_ci": row["accuracy_ci"],
                         "evidence_recall": row["evidence_recall"], "accuracy_by_family": row["accuracy_by_family"]})
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
