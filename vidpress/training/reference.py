"""The training recipe of the synthetic reference model (`vidpress train reference`; the model itself:
`vidpress.synthetic.reference`).

Trained end to end on the answer token alone such a model stays at chance, so the recipe is staged:

1. vision tower alone, with dense per-merged-token labels from the renderer (colour of a flash / of the large
   shape / of the tiny square in the token, which distractor colours it holds), through small linear heads after
   an RMS norm; rare positives are up-weighted;
2. vision tower frozen, the language side trained from scratch on the questions (cross-entropy on the answer
   letter and the "<|im_end|>" after it); in a quarter of the steps most video tokens that hold neither the
   evidence nor any flash are dropped
   (the kept tokens keep their positions, as a press does), so the model tolerates pruning.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidpress.evaluation.testbed import encode, evaluate, evaluate_settings
from vidpress.inputs import left_pad, placeholder_text
from vidpress.models import get_adapter
from vidpress.presses.planned import PlannedPress
from vidpress.synthetic.reference import FPS, build_untrained, letter_token_ids, load_reference
from vidpress.synthetic.world import FLASH_SHAPES, QUESTION_FAMILIES, Example, WorldConfig, make_split
from vidpress.training.model_card import write_model_card

__all__ = ["evaluate_presses", "fast_pixels", "train_reference"]

PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN / STD, the Qwen2-VL video processor's
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

# Per-token label heads of stage 1: a token's label is the colour (1-4, 0 = none) of the flash / large shape /
# tiny square covering >= LABEL_MIN_PIXELS of its pixels, the flash's shape (1-4, 0 = none), plus one bit per
# distractor colour.
_CLASS_HEADS = ("flash", "flash_shape", "big", "small")
LABEL_MIN_PIXELS = 6


# ------------------------------------------------------------------------------------------- fast inputs


def fast_pixels(model, videos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values_videos, video_grid_thw) of uint8 videos [B, F, H, W, 3] already at the processor's size: rescaled
    and normalised with the reference processor's mean and std, then laid out by the model's adapter as the video
    processor lays them out (`Qwen2VLAdapter.patchify`), without the processor's per-frame work (training speed)."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 1, 3, 1, 1)
    x = (torch.from_numpy(videos).permute(0, 1, 4, 2, 3).float() / 255.0 - mean) / std  # [B, F, C, H, W]
    return get_adapter(model).patchify(x)


class _Prompts:
    """Token ids of chat prompts, cached per question; equal to what the processor produces."""

    def __init__(self, processor, num_video_tokens: int):
        self.processor, self.n = processor, num_video_tokens
        self.tokenizer = processor.tokenizer
        self.cache: dict[str, list[int]] = {}
        self.video_id = self.tokenizer.convert_tokens_to_ids(processor.video_token)
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id

    def ids(self, question: str) -> list[int]:
        if question not in self.cache:
            text = placeholder_text(self.processor, question, self.n)
            self.cache[question] = self.tokenizer.encode(text, add_special_tokens=False)
        return self.cache[question]

    def batch(self, questions: list[str], suffixes: list[list[int]] | None = None) -> dict:
        """Left-padded model kwargs of the prompts, each followed by its suffix token ids."""
        rows = [self.ids(q) + (suffixes[i] if suffixes else []) for i, q in enumerate(questions)]
        input_ids, attention_mask = left_pad(rows, self.pad_id)
        mm_token_type_ids = 2 * (input_ids == self.video_id).long()
        return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids)


# ------------------------------------------------------------------------------------------- stage 1 labels


def token_labels(example: Example, config: WorldConfig) -> dict[str, np.ndarray]:
    """Per-merged-token training labels [T * M] from the renderer: class heads (0 = none, 1-4 = colour + 1)
    and "medium" [T * M, 4] bits (which distractor colours the token holds)."""
    n = config.num_groups * (config.size // config.cell) ** 2
    labels = {name: np.zeros(n, dtype=np.int64) for name in _CLASS_HEADS}
    labels["medium"] = np.zeros((n, 4), dtype=np.float32)
    for obj in example.info["objects"]:
        present = obj["token_pixels"].reshape(-1) >= LABEL_MIN_PIXELS
        if obj["kind"] == "medium":
            labels["medium"][present, obj["colour"]] = 1.0
        else:
            labels[obj["kind"]][present] = obj["colour"] + 1
        if obj["kind"] == "flash":
            labels["flash_shape"][present] = FLASH_SHAPES.index(obj["shape"]) + 1
    return labels


class _TokenHeads(torch.nn.Module):
    """Linear read-outs of merged video tokens after a parameter-free RMS norm (stage 1 only, not shipped)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(width, 5) for name in _CLASS_HEADS})
        self.heads["medium"] = torch.nn.Linear(width, 4)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = features * torch.rsqrt(features.pow(2).mean(-1, keepdim=True) + 1e-6)
        return {name: head(x) for name, head in self.heads.items()}


def _stage1_loss(outputs: dict, labels: dict, positive_weight: float):
    class_weight = torch.tensor([1.0] + [positive_weight] * 4)
    loss = sum(F.cross_entropy(outputs[n], labels[n], weight=class_weight) for n in _CLASS_HEADS)
    loss = loss + F.binary_cross_entropy_with_logits(
        outputs["medium"], labels["medium"], pos_weight=torch.full((4,), positive_weight / 2)
    )
    # Accuracy of the flash-colour read-out on tokens that hold a flash (the rarest label), for the progress bar.
    flash = labels["flash"] > 0
    hit = (outputs["flash"].argmax(-1) == labels["flash"])[flash].float()
    return loss, (hit.mean().item() if hit.numel() else float("nan"))


# ------------------------------------------------------------------------------------------- training


@dataclass
class CachedSplit:
    """Stage-2 training data held in memory: frozen vision features (fp16) and what the loss needs."""

    features: torch.Tensor  # [N, T * M, D] float16
    questions: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    # [T * M] bool: tokens never dropped in training: the needed events' and every flash's (dropping a query
    # clip's other flashes would make "the colour of the only flash left" a right answer)
    protected: list[torch.Tensor] = field(default_factory=list)


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def video_grid(batch: int, config: WorldConfig, patch: int = 14) -> torch.Tensor:
    side = config.size // patch
    return torch.tensor([[config.num_groups, side, side]] * batch)


def _examples(split: str, indices, config: WorldConfig) -> list[Example]:
    """Examples `indices` of `split`, as make_split draws them (one at a time, in any order)."""
    from vidpress.synthetic.world import SPLIT_BASE, make_example

    return [make_example(QUESTION_FAMILIES[i % len(QUESTION_FAMILIES)], SPLIT_BASE[split] + int(i), config)
            for i in indices]


def _train_vision(model, config, train_examples, steps, batch_size, lr, positive_weight, seed, progress):
    from tqdm.auto import tqdm

    visual = model.model.visual
    heads = _TokenHeads(visual.config.out_hidden_size)
    params = list(visual.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_schedule(s, steps, max(1, steps // 20)))
    order = np.random.default_rng([seed, 1])
    perm, cursor = order.permutation(train_examples), 0
    visual.train()
    bar = tqdm(range(steps), desc="stage 1: vision tower", disable=not progress, mininterval=2.0)
    ema_loss = ema_acc = None
    for _ in bar:
        if cursor + batch_size > len(perm):
            perm, cursor = order.permutation(train_examples), 0
        batch = _examples("train", perm[cursor : cursor + batch_size], config)
        cursor += batch_size
        pixels, grid = fast_pixels(model, np.stack([e.video for e in batch]))
        labels = [token_labels(e, config) for e in batch]
        labels = {k: torch.from_numpy(np.concatenate([lab[k] for lab in labels])) for k in labels[0]}
        features = visual(pixels, grid_thw=grid).pooler_output
        loss, acc = _stage1_loss(heads(features), labels, positive_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if not math.isnan(acc):
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", flash_colour_acc=f"{ema_acc or 0:.3f}")
    visual.eval()
    readout = _token_readout(model, heads, _examples("val", np.arange(96), config), config)
    return {"stage1_loss": ema_loss, "stage1_token_readout": readout}


@torch.no_grad()
def _token_readout(model, heads, examples, config) -> dict:
    """Held-out per-token read-out of the stage-1 heads: for each class head, the share of positive tokens
    whose colour is read right and of negative tokens read as none; for the distractor bits, accuracy."""
    pixels, grid = fast_pixels(model, np.stack([e.video for e in examples]))
    outputs = heads(model.model.visual(pixels, grid_thw=grid).pooler_output)
    labels = [token_labels(e, config) for e in examples]
    labels = {k: torch.from_numpy(np.concatenate([lab[k] for lab in labels])) for k in labels[0]}
    result = {}
    for name in _CLASS_HEADS:
        hit = outputs[name].argmax(-1) == labels[name]
        positive = labels[name] > 0
        result[f"{name}_on_positives"] = round(hit[positive].float().mean().item(), 3)
        result[f"{name}_on_negatives"] = round(hit[~positive].float().mean().item(), 3)
    result["distractor_bits"] = round(((outputs["medium"] > 0) == (labels["medium"] > 0)).float().mean().item(), 3)
    return result


@torch.no_grad()
def _encode(model, examples: list[Example], config: WorldConfig, batch_size: int = 64) -> torch.Tensor:
    """Frozen vision features [N, T * M, D] of `examples`, as `get_video_features` computes them."""
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        pixels, grid = fast_pixels(model, np.stack([e.video for e in batch]))
        features = model.model.get_video_features(pixels, grid).pooler_output
        out.append(torch.stack(features).half())
    return torch.cat(out)


def cache_split(model, split, indices, config, progress, desc) -> CachedSplit:
    from tqdm.auto import tqdm

    chunks, cached = [], CachedSplit(features=torch.empty(0))
    for start in tqdm(range(0, len(indices), 64), desc=desc, disable=not progress, mininterval=2.0):
        examples = _examples(split, indices[start : start + 64], config)
        chunks.append(_encode(model, examples, config))
        for e in examples:
            cached.questions.append(e.question)
            cached.answers.append(e.answer)
            cached.families.append(e.family)
            protected = torch.stack(e.evidence_tokens(config.temporal_patch, config.cell)).any(0)
            for obj in e.info["objects"]:
                if obj["kind"] == "flash":
                    protected |= torch.from_numpy(obj["token_pixels"].reshape(-1) > 0)
            cached.protected.append(protected)
    cached.features = torch.cat(chunks)
    return cached


def _lm_batch(model, prompts: _Prompts, data: CachedSplit, rows, config, letters, drop: np.random.Generator | None):
    """Model kwargs for cached rows (answer letter + <|im_end|> appended) and the targets; with `drop`, most
    unprotected video tokens of each video are removed through the press machinery (positions preserved)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling


    suffixes = [[letters[data.answers[r]], prompts.end_id] for r in rows]
    inputs = prompts.batch([data.questions[r] for r in rows], suffixes)
    features = data.features[rows].float()
    inputs["video_grid_thw"] = video_grid(len(rows), config)
    inputs["second_per_grid_ts"] = torch.full((len(rows),), config.temporal_patch / FPS)
    inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}
    if drop is not None:
        plans = []
        n = features.shape[1]
        for r in rows:
            protected = data.protected[r]
            keep = protected.clone()
            budget = int(round(drop.uniform(0.05, 0.5) * n))
            others = np.flatnonzero(~protected.numpy())
            extra = max(0, budget - int(protected.sum()))
            keep[drop.choice(others, size=min(extra, len(others)), replace=False)] = True
            if not keep.any():
                keep[int(drop.integers(n))] = True
            plans.append(keep.nonzero().squeeze(1))
        inputs, _ = get_adapter(model).press_inputs(PlannedPress(retention=0.5, plans=plans), inputs,
                                                    for_generate=False)
    targets = torch.tensor([[letters[data.answers[r]], prompts.end_id] for r in rows])
    return inputs, targets


def _train_language(model, processor, data, val, config, steps, batch_size, lr, drop_share, seed, progress):
    """Stage 2 on the cached features `data`; `val`: validation batches encoded once (see `bench.encode`), scored
    five times along the way, or None."""
    from tqdm.auto import tqdm

    letters = letter_token_ids(processor)
    prompts = _Prompts(processor, data.features.shape[1])
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_schedule(s, steps, max(1, steps // 20)))
    rng = np.random.default_rng([seed, 2])
    perm, cursor = rng.permutation(len(data.answers)), 0
    model.train()
    bar = tqdm(range(steps), desc="stage 2: language model", disable=not progress, mininterval=2.0)
    ema_loss = ema_acc = None
    history = []
    for step in bar:
        if cursor + batch_size > len(perm):
            perm, cursor = rng.permutation(len(data.answers)), 0
        rows = perm[cursor : cursor + batch_size]
        cursor += batch_size
        dropping = rng.random() < drop_share
        inputs, targets = _lm_batch(model, prompts, data, rows, config, letters, rng if dropping else None)
        logits = model(**inputs).logits[:, -3:-1]  # positions predicting the letter and the <|im_end|>
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        acc = (logits[:, 0, letters].argmax(-1) == torch.tensor([data.answers[r] for r in rows])).float().mean().item()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}")
        if val is not None and ((step + 1) % max(1, steps // 5) == 0 or step + 1 == steps):
            model.eval()
            val_row = evaluate(model, val, None, letters)
            per_family = {f: round(a, 3) for f, a in val_row["accuracy_by_family"].items()}
            history.append({"step": step + 1, "val_accuracy": val_row["accuracy"]})
            bar.write(f"stage 2 step {step + 1}: val accuracy {val_row['accuracy']:.3f} {per_family}")
            model.train()
    model.eval()
    return {"stage2_loss": ema_loss, "stage2_train_accuracy": ema_acc, "stage2_val_history": history}


def train_reference(
    out_dir,
    *,
    train_examples: int = 12000,
    stage1_steps: int = 400,
    stage2_steps: int = 4000,
    batch_size: int = 32,
    stage1_lr: float = 2e-3,
    stage2_lr: float = 1.5e-3,
    positive_weight: float = 10.0,
    drop_share: float = 0.25,
    val_examples: int = 360,
    test_examples: int = 720,
    seed: int = 0,
    threads: int | None = None,
    vision_from=None,
    progress: bool = True,
    config: WorldConfig = WorldConfig(),
    command: str | None = None,
) -> dict:
    """Train the reference model with the staged recipe, save it to `out_dir`, evaluate it on the test split
    and write metrics.json and MODEL_CARD.md there. Returns the metrics.

    train_examples: size of the training split used (stage 1 renders them on the fly, stage 2 caches their
    frozen vision features). stage1_steps / stage2_steps: optimiser steps of batch_size examples.
    drop_share: share of stage-2 steps in which most video tokens holding neither evidence nor a flash are dropped.
    test_examples: held-out examples evaluated with all tokens and under VidCom2 / Random / Uniform at 25% and
    10% (0 skips the evaluation). vision_from: a reference checkpoint whose vision tower (stage 1) is copied in
    before stage 1 runs (with stage1_steps=0, only stage 2 is trained). Deterministic given seed and threads.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    start = time.time()
    model, processor = build_untrained(seed)
    metrics: dict = {
        "seed": seed,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_examples": train_examples,
        "stage1_steps": stage1_steps,
        "stage2_steps": stage2_steps,
        "batch_size": batch_size,
        "stage1_lr": stage1_lr,
        "stage2_lr": stage2_lr,
    }
    if vision_from is not None:
        trained, _ = load_reference(vision_from)
        model.model.visual.load_state_dict(trained.model.visual.state_dict())
        metrics["vision_from"] = str(vision_from)
    torch.manual_seed(seed)
    if stage1_steps:
        metrics.update(
            _train_vision(model, config, train_examples, stage1_steps, batch_size, stage1_lr, positive_weight, seed,
                          progress)
        )
    metrics["stage1_seconds"] = round(time.time() - start, 1)
    t1 = time.time()
    data = cache_split(model, "train", np.arange(train_examples), config, progress, "stage 2: caching vision features")
    val = None
    if val_examples:
        val = encode(model, processor, make_split("val", val_examples, config=config), 64, progress)
    metrics["feature_norm"] = round(float(data.features[:256].float().norm(dim=-1).mean()), 2)
    metrics["cache_seconds"] = round(time.time() - t1, 1)
    t2 = time.time()
    torch.manual_seed(seed + 1)
    metrics.update(
        _train_language(model, processor, data, val, config, stage2_steps, batch_size, stage2_lr, drop_share, seed,
                        progress)
    )
    metrics["stage2_seconds"] = round(time.time() - t2, 1)
    metrics["train_seconds"] = round(time.time() - start, 1)
    del data
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if test_examples:
        metrics["test"] = evaluate_presses(model, processor, make_split("test", test_examples, config=config), progress)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_model_card(out_dir, metrics, command)
    return metrics


#: What the test rows of metrics.json keep of the bench's measures.
TEST_KEYS = ("accuracy", "accuracy_by_family", "evidence_recall", "effective_retention", "examples")


def evaluate_presses(model, processor, examples, progress: bool = True, retentions=(0.25, 0.10)) -> dict:
    """Bench rows (TEST_KEYS: accuracy overall and per family, evidence recall, effective retention, examples) with
    all tokens ("all") and under VidCom2 / Random / Uniform at each retention ("vidcom2@0.25", ...)."""
    from vidpress.presses import RandomPress, UniformPress, VidCom2Press

    settings = {"all": None}
    for r in retentions:
        for name, cls in (("vidcom2", VidCom2Press), ("random", RandomPress), ("uniform", UniformPress)):
            settings[f"{name}@{r:g}"] = cls(retention=r)
    results = {}
    for name, row in evaluate_settings(model, processor, examples, settings, progress=False).items():
        results[name] = {k: row[k] for k in TEST_KEYS}
        if progress:
            by_family = " ".join(f"{k} {v:.2f}" for k, v in row["accuracy_by_family"].items())
            print(f"test {name:>14}: accuracy {row['accuracy']:.3f}  " + by_family)
    return results


def _write_model_card(out_dir, metrics: dict, command: str | None = None) -> Path:
    """MODEL_CARD.md in `out_dir` from the training metrics."""
    out_dir = Path(out_dir)
    size_kb = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file() and p.suffix != ".md") / 1024
    intro = [
        "A stock `Qwen2_5_VLForConditionalGeneration`, trained from scratch on CPU on the procedural video-QA world",
        "of `vidpress.synthetic` (six question families, see `vidpress/synthetic/world.py`). It exists to show what a",
        "press keeps: with all tokens it answers almost every question; dropping the wrong tokens costs accuracy.",
    ]
    architecture = [
        "## Architecture",
        f"- {metrics['parameters']:,} float32 parameters ({size_kb:.0f} KB on disk with processor and tokenizer).",
        "- Vision: Qwen2.5-VL tower, depth 2, hidden 96, MLP 192, 4 heads, patch 14, temporal patch 2, spatial merge 2",
        "  (window 112 px = one frame, block 1 full attention), merger to width 128.",
        "- Text: Qwen2 decoder, 4 layers, hidden 128, 4 heads / 2 KV heads, MLP 256, 3-D M-RoPE (sections 4/6/6).",
        "- Tokenizer: byte-level BPE (400 tokens) with Qwen's special tokens; A, B, C, D are single tokens.",
        "- Input: 16 frames of 112x112 described at 8 fps -> 8 x 4 x 4 = 128 video tokens.",
        "  Answer = first generated token after `<|im_start|>assistant\\n` (trained to be followed by `<|im_end|>`);",
        "  score it as the argmax of the 4 letter-token logits at the last prompt position",
        "  (`vidpress.synthetic.reference.letter_token_ids`, `example_inputs`).",
    ]
    recipe = [
        "## Training recipe",
        f"1. Vision tower alone, {metrics['stage1_steps']} steps x {metrics['batch_size']} clips, AdamW lr "
        f"{metrics['stage1_lr']:g} (cosine),",
        "   dense per-merged-token labels from the renderer (colour of the flash / large shape / tiny square in the",
        "   token, distractor colours present) through linear heads after an RMS norm, positives weighted x10.",
        f"2. Vision frozen; language side from scratch, {metrics['stage2_steps']} steps x {metrics['batch_size']}, "
        f"AdamW lr {metrics['stage2_lr']:g}",
        "   (cosine), cross-entropy on the answer letter and the `<|im_end|>` after it; in 25% of the steps each",
        "   video keeps its evidence and flash tokens plus a random 5-50% of the rest (kept tokens keep their M-RoPE",
        "   positions).",
        f"- Data: the first {metrics['train_examples']:,} examples of the `train` split (families round-robin).",
        *(
            [f"- Vision tower copied from `{metrics['vision_from']}` before stage 1."]
            if metrics.get("vision_from")
            else []
        ),
        *(
            [
                "- Stage-1 per-token read-out on 96 held-out clips (share right on tokens with / without the object): "
                + ", ".join(f"{k} {v:.3f}" for k, v in metrics["stage1_token_readout"].items())
                + "."
            ]
            if metrics.get("stage1_token_readout")
            else []
        ),
        f"- Seed {metrics['seed']}, {metrics['threads']} CPU threads. Time: stage 1 {metrics['stage1_seconds']:.0f} s, "
        f"feature cache {metrics['cache_seconds']:.0f} s, stage 2 {metrics['stage2_seconds']:.0f} s; total "
        f"{metrics['train_seconds'] / 60:.1f} min.",
    ]
    results = []
    test = metrics.get("test")
    if test:
        n = test["all"]["examples"]
        families = list(test["all"]["accuracy_by_family"])
        table = [
            f"## Accuracy on the first {n} `test` examples ({n // len(families)} per family)",
            "",
            "Accuracy = argmax over the four letter logits; chance is 0.25. Evidence recall = share of examples whose",
            "kept tokens touch every event the answer needs (model-free). Presses run via `with press(model)`.",
            "",
            "| setting | kept | overall | " + " | ".join(families) + " | evidence recall |",
            "|---|---|---|" + "---|" * len(families) + "---|",
        ]
        for name, r in test.items():
            row = " | ".join(f"{r['accuracy_by_family'][f]:.3f}" for f in families)
            table.append(f"| {name} | {r['effective_retention']:.2f} | **{r['accuracy']:.3f}** | {row} | "
                         f"{r['evidence_recall']:.3f} |")
        results.append(table)
    return write_model_card(out_dir, "vidpress synthetic reference model", intro, [architecture, recipe],
                            command or "vidpress train reference --out DIR", results)
