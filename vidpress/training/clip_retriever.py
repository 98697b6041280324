"""`vidpress train clip-retriever`: a tiny CLIP-style dual encoder trained on the synthetic long family.

MARC (arXiv 2510.07915) retrieves the question's event clips before the vision encoder with an image-text dual
encoder. No real CLIP weights exist offline, so this trains a stock transformers `CLIPModel` from a tiny config
(random init, 56 x 56 images, a two-layer text tower over a byte-level BPE tokenizer) on the long family's
`train` split, and saves it with a `CLIPProcessor` that `CLIPEmbedder.from_pretrained` loads via AutoProcessor.

The train clips are drawn with each `LongConfig.key` asked for (default "shape": "What colour was the flashing
ring?"; a ring-keyed question is a shape-keyed one about the ring; "colour": "What shape was the red flash?").
Objective, per step: `batch_size` train clips; texts = their distinct `Example.prompt`s; images = from every clip
the frames where the asked event is visible, up to `distractor_frames` frames showing a distractor flash of the
same clip (another key: the hard negatives) and up to `empty_frames` frames with no flash. A text matches a frame
when the frame shows a flash of the colour or shape the text names (renderer facts, so frames of other clips count
too). Loss: CLIP's symmetric InfoNCE with its learnable temperature, with several
positives: text -> frames is the mean over a text's matching frames of -log softmax over every frame of the batch;
frame -> text (frames with a match) is -log of the softmax mass on its matching texts; the loss is their mean.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidpress.evaluation.long_retrieval import retrieval_recall
from vidpress.synthetic.world import COLOUR_NAMES, FLASH_SHAPES, QUADRANTS, QUESTIONS
from vidpress.training.model_card import write_model_card

__all__ = ["build_clip_retriever", "clip_batch", "clip_loss", "frame_pools", "train_clip_retriever"]

SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<pad>")


def _corpus() -> list[str]:
    """Every question text of the synthetic world, with every colour, shape and quadrant filled in."""
    texts = []
    for template in QUESTIONS.values():
        texts += sorted({template.format(colour=c, shape=s, quadrant=q)
                         for c in COLOUR_NAMES for s in FLASH_SHAPES for q in QUADRANTS})
    return texts


def _tokenizer(vocab_size: int):
    """Byte-level BPE on the world's questions, wrapped as <|startoftext|> text <|endoftext|> (CLIP pools at eos)."""
    import transformers
    from tokenizers import processors

    from vidpress.tiny.tokenizer import byte_level_bpe

    bpe = byte_level_bpe(_corpus(), list(SPECIALS), vocab_size)
    bos, eos, pad = SPECIALS
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, bpe.token_to_id(bos)), (eos, bpe.token_to_id(eos))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad,
                                                model_max_length=32)


def build_clip_retriever(width: int = 64, layers: int = 2, image_size: int = 56, patch_size: int = 8,
                         vocab_size: int = 400, seed: int = 0):
    """(CLIPModel, CLIPProcessor), random init from a tiny config: both towers `layers` deep and `width` wide,
    `image_size` square images cut into `patch_size` patches, texts of at most 32 tokens."""
    import vidpress  # noqa: F401  (makes torchvision importable before processor classes)
    # isort: split
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _tokenizer(vocab_size)
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=width,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _flash_masks(example) -> np.ndarray:
    """[T] bit mask per frame of the flashes visible in it: bit c for colour COLOUR_NAMES[c], bit 4 + s for shape
    FLASH_SHAPES[s]."""
    masks = np.zeros(len(example.video), dtype=np.int64)
    for obj in example.info["objects"]:
        if obj["kind"] == "flash":
            masks[obj["frames"]] |= (1 << int(obj["colour"])) | (1 << (4 + FLASH_SHAPES.index(obj["shape"])))
    return masks


def _text_bit(example) -> int:
    """The `_flash_masks` bit of what the example's question names: its colour (key "colour") or shape."""
    if example.info["key"] == "colour":
        return 1 << COLOUR_NAMES.index(example.info["colour"])
    return 1 << (4 + FLASH_SHAPES.index(example.info["shape"]))


def frame_pools(example) -> tuple[list[int], list[int], list[int]]:
    """(asked, distractor, empty) frame indices of a long example: frames showing the asked event, frames
    showing only distractor flashes, frames with no flash."""
    masks = _flash_masks(example)
    asked = sorted(int(f) for f in example.info["objects"][0]["frames"])
    distractor = [int(f) for f in np.flatnonzero(masks) if f not in set(asked)]
    empty = [int(f) for f in np.flatnonzero(masks == 0)]
    return asked, distractor, empty


def _window(rng: np.random.Generator, num_frames: int, max_frames: int, frames_per_window: int,
            around: list[int] | None) -> list[int]:
    """A random window of 2..max_frames consecutive frames (holding one of `around` when given), subsampled to at
    most `frames_per_window` evenly spaced frames as `VisualMemoryRetriever` embeds a clip."""
    length = int(rng.integers(2, min(max_frames, num_frames) + 1))
    if around:
        hit = int(rng.choice(around))
        start = int(rng.integers(max(0, hit - length + 1), min(hit, num_frames - length) + 1))
    else:
        start = int(rng.integers(0, num_frames - length + 1))
    picked = np.unique(np.linspace(start, start + length - 1, min(frames_per_window, length)).round().astype(int))
    return [int(f) for f in picked]


def clip_batch(examples, rng: np.random.Generator, distractor_frames: int = 6, empty_frames: int = 2,
               windows: int = 3, window_frames: int = 40, frames_per_window: int = 8):
    """One contrastive batch: (frames uint8 [N, H, W, 3], texts [Q], frame_match bool [Q, N], window_of [W] lists
    of rows of `frames`, window_match bool [Q, W]).

    texts are the examples' distinct prompts. Frames: every asked-event frame of every example plus up to
    `distractor_frames` distractor and `empty_frames` empty frames each. Windows (the clip-level term): per
    example one random window of at most `window_frames` frames around the asked event and `windows - 1`
    anywhere, each subsampled to `frames_per_window` frames. A text matches a frame that shows a flash of the
    colour it names, and a window one of whose frames does.
    """
    for example in examples:
        if example.family != "long":
            raise ValueError(f"the clip retriever trains on long-family examples; got family {example.family!r}")
    texts = list(dict.fromkeys(e.prompt for e in examples))
    bit_of = {e.prompt: _text_bit(e) for e in examples}
    frames, masks, window_of = [], [], []
    rows = 0
    for example in examples:
        asked, distractor, empty = frame_pools(example)
        picked = asked + [int(f) for f in rng.permutation(distractor)[:distractor_frames]]
        picked += [int(f) for f in rng.permutation(empty)[:empty_frames]]
        for w in range(windows):
            window = _window(rng, len(example.video), window_frames, frames_per_window, asked if w == 0 else None)
            window_of.append(list(range(rows + len(picked), rows + len(picked) + len(window))))
            picked += window
        frames.append(example.video[picked])
        masks.append(_flash_masks(example)[picked])
        rows += len(picked)
    masks = np.concatenate(masks)
    bits = np.array([bit_of[t] for t in texts])[:, None]
    frame_match = (masks[None] & bits) > 0  # [Q, N]
    window_match = np.zeros((len(texts), len(window_of)), dtype=bool)  # [Q, W]
    for w, rows in enumerate(window_of):
        window_match[:, w] = frame_match[:, rows].any(1)
    return (np.concatenate(frames), texts, torch.from_numpy(frame_match), window_of,
            torch.from_numpy(window_match))


def clip_loss(text: torch.Tensor, image: torch.Tensor, match: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE: text [Q, D], image [N, D] (L2-normalised), match bool [Q, N]. A text
    without a match in the batch is left out of the text -> image term. logit_scale: CLIP's log temperature."""
    logits = logit_scale.exp() * text @ image.T  # [Q, N]
    has = match.any(1)
    log_t2i = logits[has].log_softmax(dim=1)
    text_to_image = -(log_t2i * match[has]).sum(1) / match[has].sum(1)
    matched = match.any(0)
    log_i2t = logits.T[matched].log_softmax(dim=1)  # [N', Q]
    image_to_text = -torch.logsumexp(log_i2t.masked_fill(~match.T[matched], float("-inf")), dim=1)
    return (text_to_image.mean() + image_to_text.mean()) / 2


def window_embeddings(image: torch.Tensor, window_of: list[list[int]]) -> torch.Tensor:
    """[N, D] L2-normalised frame embeddings -> [W, D]: each window's normalised mean (as a retrieved clip's)."""
    return F.normalize(torch.stack([image[rows].mean(0) for rows in window_of]), dim=-1)


def train_clip_retriever(
    out_dir,
    *,
    train_examples: int = 2000,
    keys: tuple[str, ...] = ("shape",),
    steps: int = 1500,
    batch_size: int = 8,
    distractor_frames: int = 6,
    empty_frames: int = 2,
    windows: int = 3,
    lr: float = 2e-3,
    width: int = 64,
    layers: int = 2,
    test_examples: int = 240,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train the dual encoder on `train_examples` long-family `train` examples, an equal share drawn with each
    question key of `keys` (consecutive seeds; a fresh batch of `batch_size` clips each step, AdamW at `lr` with
    cosine decay), save it to `out_dir` (save_pretrained layout with its processor), measure retrieval on the first
    `test_examples` long `test` examples of each key (`retrieval_recall`, 0: skip) and write metrics.json and
    MODEL_CARD.md. Returns the metrics."""
    from tqdm.auto import tqdm

    from vidpress.synthetic import make_split
    from vidpress.synthetic.long import LongConfig

    if threads is not None:
        torch.set_num_threads(threads)
    for name, value, low in (("train_examples", train_examples, batch_size), ("steps", steps, 1),
                             ("batch_size", batch_size, 1), ("distractor_frames", distractor_frames, 0),
                             ("empty_frames", empty_frames, 0),
                             ("windows", windows, 0), ("test_examples", test_examples, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    keys = tuple(keys)
    if not keys or len(set(keys)) != len(keys) or train_examples < len(keys) * batch_size:
        raise ValueError(f"keys must be distinct LongConfig keys, with train_examples >= batch_size per key; got "
                         f"{keys!r} for {train_examples} examples")
    configs = {key: LongConfig(key=key) for key in keys}  # LongConfig names the keys it accepts
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model, processor = build_clip_retriever(width, layers, seed=seed)
    share = train_examples // len(keys)
    examples = [e for i, key in enumerate(keys)
                for e in make_split("train", share, families=("long",), config=configs[key], start=i * share)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    rng = np.random.default_rng(seed)
    log = []
    model.train()
    bar = tqdm(range(steps), desc="training the clip retriever", disable=not progress)
    for step in bar:
        batch = [examples[i] for i in rng.choice(len(examples), size=batch_size, replace=False)]
        frames, texts, match, window_of, window_match = clip_batch(batch, rng, distractor_frames, empty_frames,
                                                                   windows)
        pixels = processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        loss = clip_loss(text, image, match, model.logit_scale)
        if windows:
            loss = loss + clip_loss(text, window_embeddings(image, window_of), window_match, model.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100
            model.logit_scale.clamp_(0, np.log(100))
        if step % 20 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "logit_scale": round(model.logit_scale.item(), 3)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    train_seconds = round(time.time() - start, 1)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    metrics: dict = {
        "train_examples": len(examples), "keys": list(keys), "steps": steps, "batch_size": batch_size,
        "distractor_frames": distractor_frames, "empty_frames": empty_frames, "windows": windows, "lr": lr,
        "width": width,
        "layers": layers, "parameters": sum(p.numel() for p in model.parameters()), "seed": seed,
        "threads": torch.get_num_threads(), "train_seconds": train_seconds, "log": log,
    }
    if test_examples:
        from vidpress.retrieval import CLIPEmbedder

        start = time.time()
        embedder = CLIPEmbedder.from_pretrained(out_dir)
        metrics["test"] = {key: retrieval_recall(embedder, make_split("test", test_examples, families=("long",),
                                                                      config=configs[key])) for key in keys}
        metrics["eval_seconds"] = round(time.time() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_model_card(out_dir, metrics, command)
    return metrics


def _write_model_card(out_dir, metrics: dict, command: str | None) -> Path:
    intro = [
        "A tiny CLIP-style image-text dual encoder (stock transformers `CLIPModel`, random init from a tiny config) "
        "trained contrastively on the synthetic world's long family, for MARC's Visual Memory Retriever "
        "(arXiv 2510.07915): `VisualMemoryRetriever(CLIPEmbedder.from_pretrained(this folder), top_k=3)`. "
        "It knows nothing but the synthetic world: 56 x 56 frames with coloured flashes and its question texts.",
    ]
    recipe = [
        "## Recipe",
        "",
        f"- Model: both towers {metrics['layers']} layers x {metrics['width']} wide, 8 x 8 patches of 56 x 56 "
        f"frames, a byte-level BPE tokenizer on the world's questions; {metrics['parameters']:,} parameters.",
        f"- Data: {metrics['train_examples']} long-family `train` examples, an equal share drawn with each question "
        f"key ({', '.join(metrics['keys'])}); per step {metrics['batch_size']} clips, text = each clip's `prompt` (the "
        "question without options), images = the frames where the asked event is visible, up to "
        f"{metrics['distractor_frames']} frames of the same clip's distractor flashes (another key: hard negatives) "
        f"and up to {metrics['empty_frames']} empty frames.",
        f"- Windows: per clip {metrics['windows']} random windows of 2-40 frames (the first around the asked event), "
        "each embedded as `VisualMemoryRetriever` embeds a clip (normalised mean of at most 8 evenly spaced frames).",
        "- Loss: CLIP's symmetric InfoNCE with its learnable temperature, with several positives per text (a text "
        "matches every frame of the batch showing a flash of the colour or shape it names), on frames plus the "
        "same on windows (a text matches a window one of whose frames it matches).",
        f"- {metrics['steps']} AdamW steps at lr {metrics['lr']} (50 warm-up steps, cosine decay), seed "
        f"{metrics['seed']}, {metrics['threads']} CPU thread(s); {metrics['train_seconds'] / 60:.1f} min.",
    ]
    results = []
    if "test" in metrics:
        lines = [
            "## Retrieval on the long family's test split",
            "",
            "Per question key, the first long `test` examples drawn with it; clips from `VisualMemoryRetriever`'s "
            "event segmentation; a hit: a retrieved clip holds a frame where the asked event is visible. "
            "Contested: the videos cut into more than 3 clips (elsewhere top-3 keeps every clip). Frame top-1: "
            "the frame most similar to the question shows the asked event (every frame embedded, no segmentation).",
            "",
            "| key | videos | clips (mean) | one clip | top-1 | top-3 | random top-3 | contested | contested top-3 "
            "| contested random top-3 | frame top-1 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, t in metrics["test"].items():
            lines.append(f"| {key} | {t['examples']} | {t['mean_clips']:.1f} | {t['single_clip']} | {t['top1']:.3f} "
                         f"| {t['top3']:.3f} | {t['random_top3']:.3f} | {t['contested']} | {t['contested_top3']:.3f} "
                         f"| {t['contested_random_top3']:.3f} | {t['frame_top1']:.3f} |")
        results = [lines]
    return write_model_card(out_dir, "clip-retriever: a tiny dual encoder for MARC's retrieval on the long family",
                            intro, [recipe], command or "vidpress train clip-retriever --out DIR", results)
