"""Continue training the synthetic reference model on the long family (`vidpress train long-reference`).

The vision tower stays frozen (it reads 56x56 long-clip frames with the same per-cell features as 112x112 ones);
the language side is trained on the long family (`vidpress.synthetic.long`) mixed with a replay of the six short
families, so their accuracy is kept. Loss, as in stage 2 of `vidpress.training.reference`: cross-entropy on the
answer letter and the `<|im_end|>` after it; in a share of the steps each video keeps only its flash tokens plus a
random 5-50% of the rest (kept tokens keep their M-RoPE positions), so the model tolerates pruning.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidpress.evaluation.testbed import evaluate_settings
from vidpress.inputs import left_pad, placeholder_text
from vidpress.models import get_adapter
from vidpress.presses.planned import PlannedPress
from vidpress.synthetic.long import LONG_FAMILY
from vidpress.synthetic.reference import FPS, REFERENCE_DIR, letter_token_ids, load_reference
from vidpress.synthetic.world import Example, make_split
from vidpress.training.model_card import write_model_card
from vidpress.training.reference import cosine_schedule, fast_pixels

__all__ = ["CachedVideos", "cache_videos", "train_long_reference"]


@dataclass
class CachedVideos:
    """Training rows held in memory: frozen vision features per video ([N_v, D] fp16), token grid, question,
    answer, family and the tokens never dropped (every flash's)."""

    features: list[torch.Tensor] = field(default_factory=list)
    grids: list[list[int]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    protected: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def cache_videos(model, examples: list[Example], data: CachedVideos, progress: bool, desc: str) -> None:
    """Encode `examples` one video at a time (long clips differ in length) and append them to `data`."""
    from tqdm.auto import tqdm

    patch = model.config.vision_config.patch_size
    tp = model.config.vision_config.temporal_patch_size
    cell = patch * model.config.vision_config.spatial_merge_size
    for e in tqdm(examples, desc=desc, disable=not progress, mininterval=5.0):
        pixels, grid = fast_pixels(model, e.video[None])
        data.features.append(model.model.get_video_features(pixels, grid).pooler_output[0].half())
        frames, height, width = e.video.shape[:3]
        data.grids.append([frames // tp, height // patch, width // patch])
        data.questions.append(e.question)
        data.answers.append(e.answer)
        data.families.append(e.family)
        protected = torch.stack(e.evidence_tokens(tp, cell)).any(0)
        for obj in e.info["objects"]:
            if obj["kind"] == "flash":
                protected |= torch.from_numpy(obj["token_pixels"].reshape(-1) > 0)
        data.protected.append(protected)


def _batch(model, processor, data: CachedVideos, rows, letters, end_id, drop: np.random.Generator | None):
    """Model kwargs of cached rows (answer letter + <|im_end|> appended) and the targets [B, 2]; with `drop`, each
    video keeps its protected tokens plus a random 5-50% of the rest."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tokenizer = processor.tokenizer
    video_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    ids = [tokenizer.encode(placeholder_text(processor, data.questions[r], len(data.features[r])),
                            add_special_tokens=False) + [letters[data.answers[r]], end_id] for r in rows]
    input_ids, attention_mask = left_pad(ids, tokenizer.pad_token_id)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  mm_token_type_ids=2 * (input_ids == video_id).long(),
                  video_grid_thw=torch.tensor([data.grids[r] for r in rows]),
                  second_per_grid_ts=torch.full((len(rows),), model.config.vision_config.temporal_patch_size / FPS))
    features = tuple(data.features[r].float() for r in rows)
    inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=features)}
    if drop is not None:
        plans = []
        for r in rows:
            protected = data.protected[r]
            n = protected.numel()
            keep = protected.clone()
            others = np.flatnonzero(~protected.numpy())
            extra = max(0, int(round(drop.uniform(0.05, 0.5) * n)) - int(protected.sum()))
            keep[drop.choice(others, size=min(extra, len(others)), replace=False)] = True
            plans.append(keep.nonzero().squeeze(1))
        inputs, _ = get_adapter(model).press_inputs(PlannedPress(retention=0.5, plans=plans), inputs,
                                                    for_generate=False)
    targets = torch.tensor([[letters[data.answers[r]], end_id] for r in rows])
    return inputs, targets


def _accuracy(model, processor, progress: bool, long_examples: int, short_examples: int) -> dict:
    """All-token test accuracy: on the first `long_examples` long-family test examples and on the first
    `short_examples` six-family test examples (overall and per family)."""
    out = {}
    if long_examples:
        row = evaluate_settings(model, processor, make_split("test", long_examples, families=(LONG_FAMILY,)),
                                {"all": None}, batch_size=16, progress=progress)["all"]
        out[LONG_FAMILY] = {"accuracy": row["accuracy"], "accuracy_ci": row["accuracy_ci"], "examples": row["examples"]}
    if short_examples:
        row = evaluate_settings(model, processor, make_split("test", short_examples), {"all": None},
                                progress=progress)["all"]
        out["six"] = {"accuracy": row["accuracy"], "accuracy_ci": row["accuracy_ci"],
                      "accuracy_by_family": row["accuracy_by_family"], "examples": row["examples"]}
    return out


def train_long_reference(
    out_dir,
    *,
    base=None,
    long_examples: int = 1200,
    replay_examples: int = 1200,
    steps: int = 600,
    batch_size: int = 16,
    long_share: float = 0.5,
    lr: float = 5e-4,
    drop_share: float = 0.25,
    test_long: int = 240,
    test_short: int = 720,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Continue training the reference model at `base` (default: the shipped one) on the long family plus a replay of
    the six short families; save it to `out_dir` with metrics.json and MODEL_CARD.md. Returns the metrics.

    long_examples / replay_examples: the first examples of the `train` split of the long family / of the six
    families (their frozen vision features are cached). Each step draws round(long_share * batch_size) long rows
    and the rest from the replay. test_long / test_short: test examples scored before and after (0: skip).
    """
    from tqdm.auto import tqdm

    if threads is not None:
        torch.set_num_threads(threads)
    if not 0 <= long_share <= 1:
        raise ValueError(f"long_share must be in [0, 1]; got {long_share}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(base) if base is not None else REFERENCE_DIR
    torch.manual_seed(seed)
    start = time.time()
    model, processor = load_reference(base)
    metrics: dict = {"base": str(base), "seed": seed, "threads": torch.get_num_threads(),
                     "long_examples": long_examples, "replay_examples": replay_examples, "steps": steps,
                     "batch_size": batch_size, "long_share": long_share, "lr": lr, "drop_share": drop_share}
    # the six families' accuracy before is the reference model card's (same examples, same evaluation)
    metrics["before"] = _accuracy(model, processor, progress, test_long, 0)
    metrics["eval_before_seconds"] = round(time.time() - start, 1)

    t0 = time.time()
    long_data, replay = CachedVideos(), CachedVideos()
    cache_videos(model, make_split("train", long_examples, families=(LONG_FAMILY,)), long_data, progress,
                 "caching long")
    cache_videos(model, make_split("train", replay_examples), replay, progress, "caching replay")
    metrics["cache_seconds"] = round(time.time() - t0, 1)

    t1 = time.time()
    letters = letter_token_ids(processor)
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_schedule(s, steps, max(1, steps // 20)))
    rng = np.random.default_rng([seed, 3])
    n_long = int(round(long_share * batch_size))
    # one store: the long rows first, then the replay rows
    data = CachedVideos(*[getattr(long_data, k) + getattr(replay, k) for k in CachedVideos.__dataclass_fields__])
    model.train()
    ema = {}
    bar = tqdm(range(steps), desc="long-family language training", disable=not progress, mininterval=5.0)
    for _ in bar:
        rows_long = rng.choice(long_examples, size=n_long, replace=False) if n_long else []
        rows_replay = rng.choice(replay_examples, size=batch_size - n_long, replace=False)
        drop = rng if rng.random() < drop_share else None
        optimizer.zero_grad(set_to_none=True)
        hits, total = [], 0.0
        # long and replay rows in separate forwards: each is padded only to its own longest prompt
        for rows in ([int(r) for r in rows_long], [long_examples + int(r) for r in rows_replay]):
            if not rows:
                continue
            inputs, targets = _batch(model, processor, data, rows, letters, end_id, drop)
            # the last 3 positions; the first two predict the letter and the <|im_end|>
            logits = model(**inputs, logits_to_keep=3).logits[:, :2]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) * len(rows) / batch_size
            loss.backward()
            total += loss.item()
            hits.append((logits[:, 0, letters].argmax(-1) == targets[:, 0].new_tensor(
                [data.answers[r] for r in rows])).float())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        hit = torch.cat(hits)
        for key, value in (("loss", total), ("long_acc", hit[:n_long].mean().item() if n_long else 0.0),
                           ("replay_acc", hit[n_long:].mean().item() if n_long < batch_size else 0.0)):
            ema[key] = value if key not in ema else 0.95 * ema[key] + 0.05 * value
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
    model.eval()
    metrics.update({f"train_{k}": round(v, 4) for k, v in ema.items()})
    metrics["train_seconds"] = round(time.time() - t1, 1)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    t2 = time.time()
    metrics["after"] = _accuracy(model, processor, progress, test_long, test_short)
    metrics["eval_after_seconds"] = round(time.time() - t2, 1)
    metrics["total_seconds"] = round(time.time() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_model_card(out_dir, metrics, command)
    return metrics


def _write_model_card(out_dir, metrics: dict, command: str | None) -> Path:
    intro = [
        "The synthetic reference model (`vidpress/synthetic/reference_model`), its language side trained further",
        "on the long family of the synthetic world (`vidpress/synthetic/long.py`: 64-256 frames of 56x56, 128-512",
        "video tokens, one asked event among 8-64 distractor events) plus a replay of the six short families. Same",
        "architecture, processor and vision tower (frozen, bit-identical), so `vidpress bench` encodes a video once",
        "for this model and for the reference model's other rows.",
    ]
    recipe = [
        "## Training recipe",
        f"- Start: `{metrics['base']}`; vision tower frozen; language side trained {metrics['steps']} steps x "
        f"{metrics['batch_size']} videos",
        f"  ({round(metrics['long_share'] * metrics['batch_size'])} long, the rest replay),",
        f"  AdamW lr {metrics['lr']:g} (cosine, 5% warm-up), cross-entropy on the answer letter and `<|im_end|>`; in",
        f"  {100 * metrics['drop_share']:.0f}% of the steps each video keeps its flash tokens plus a random 5-50%",
        "  of the rest.",
        f"- Data: the first {metrics['long_examples']:,} long-family and the first {metrics['replay_examples']:,} "
        "six-family examples of the `train` split (frozen features cached once).",
        f"- Seed {metrics['seed']}, {metrics['threads']} CPU thread(s). Time: feature cache "
        f"{metrics['cache_seconds']:.0f} s, training {metrics['train_seconds']:.0f} s "
        f"(evaluation before/after {metrics['eval_before_seconds']:.0f} s / {metrics['eval_after_seconds']:.0f} s).",
    ]
    results = ["## Accuracy with all tokens on the `test` split, before (the reference model) and after",
               "", "Accuracy = argmax over the four letter logits; chance 0.25; [95% Wilson interval].", ""]
    before, after = metrics["before"], metrics["after"]
    families = list(after.get("six", {}).get("accuracy_by_family", {}))
    header = "| model | long | six families | " + " | ".join(families) + " |"
    results += [header, "|---|---|---|" + "---|" * len(families)]
    for name, row in (("reference model (before)", before), ("this model (after)", after)):
        cells = []
        for key in (LONG_FAMILY, "six"):
            r = row.get(key)
            low, high = r["accuracy_ci"] if r else (0, 0)
            cells.append(f"**{r['accuracy']:.3f}** [{low:.3f}, {high:.3f}]" if r else "-")
        cells += ([f"{row['six']['accuracy_by_family'][f]:.3f}" for f in families] if "six" in row
                  else ["see its model card"] + ["-"] * (len(families) - 1))
        results.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = [f"{after[k]['examples']} {k}" for k in (LONG_FAMILY, "six") if k in after]
    results += ["", f"Examples: the first {' and '.join(counts)}-family test examples."]
    return write_model_card(out_dir, "long-reference: the reference model trained on the long family", intro, [recipe],
                            command or "vidpress train long-reference --out DIR", [results])

