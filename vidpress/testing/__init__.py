"""Tiny random-weight Video LLMs that build offline, for tests and demos.

Each family is the stock transformers model class built from a small config, saved with its real processor
class (image + video processor, chat template) and a byte-level BPE tokenizer trained in-process, so the whole
Hugging Face loading and preprocessing path runs without any hub download. Every model has 0.5-0.85M float32
parameters (2-3.3 MB on disk) and a forward on a short clip takes ~10 ms on CPU.

At 56x56 and 8 frames every family yields 4 visual tokens per frame (per temporal pair of frames for Qwen):

=================  ==========================================================================
qwen2_vl           2x2 merged tokens x 4 temporal groups = 16 <|video_pad|>
qwen2_5_vl         same as qwen2_vl
qwen3_vl           per temporal group: "<t seconds><|vision_start|>" + 4 <|video_pad|> + "<|vision_end|>"
llava_onevision    8 frames x 2x2 pooled tokens + 1 trailing newline token = 33 <video>
llava_next_video   8 frames x 2x2 pooled tokens = 32 <video>
=================  ==========================================================================

Qwen3-VL: transformers 5.23 expands only the <|video_pad|> of the template's
"<|vision_start|><|video_pad|><|vision_end|>", so that outer pair stays around the per-frame pairs.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers.video_utils import VideoMetadata

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video")

# Bumped whenever a tiny config, processor or tokenizer changes, so stale caches are rebuilt.
_TINY_VERSION = 1
_MARKER = "vidpress_tiny.json"

_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
_PATCH = 14  # every tiny vision tower uses 14 px patches, so 56 px frames give a 4x4 patch grid
_VISION_SIZE = 56  # fixed input side of the LLaVA vision towers (SigLIP / CLIP)

_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_SPECIALS = {
    "qwen2_vl": _QWEN_SPECIALS,
    "qwen2_5_vl": _QWEN_SPECIALS,
    "qwen3_vl": _QWEN_SPECIALS,
    "llava_onevision": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    "llava_next_video": ("<unk>", "<s>", "</s>", "<image>", "<video>"),
}

# Chat templates reproduce each family's prompt layout. Written on one line with explicit '\n' because
# transformers renders them with trim_blocks, which would eat newlines that follow a block tag.
_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen2-VL and Qwen2.5-VL prepend a default system prompt; Qwen3-VL does not.
CHAT_TEMPLATES = {
    "qwen2_vl": "{% set default_system = true %}" + _QWEN_TEMPLATE,
    "qwen2_5_vl": "{% set default_system = true %}" + _QWEN_TEMPLATE,
    "qwen3_vl": "{% set default_system = false %}" + _QWEN_TEMPLATE,
    "llava_onevision": _LLAVA_OV_TEMPLATE,
    "llava_next_video": _LLAVA_NEXT_VIDEO_TEMPLATE,
}

_CORPUS = (
    "What happens? What happens in the video? Describe the video. Describe the image. What colour is the square?",
    "Which object moves? Is the square red, green, blue, yellow, white or black? Answer yes or no.",
    "The red square moves left. The blue square moves right. A green square moves up and down.",
    "How many squares are there? One, two, three, four. The first frame, the last frame, the middle frame.",
    "You are a helpful assistant. user assistant system USER: ASSISTANT:",
    "<0.2 seconds> <0.5 seconds> <1.0 seconds> <1.2 seconds> <2.5 seconds> <3.8 seconds> 0123456789",
    "A small video with moving coloured squares on a dark background. It flashes, then it stops.",
)


def train_tokenizer(family: str, corpus=_CORPUS, vocab_size: int = 400) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (~`vocab_size` tokens, trained on `corpus`) with the family's special tokens at ids 0..k-1."""
    specials = list(_SPECIALS[family])
    bpe = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if family == "llava_next_video":
        # Llama tokenizers prepend BOS to every encoded text; the chat template does not write it.
        bos_id = bpe.token_to_id("<s>")
        bpe.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    else:
        names = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    media = [t for t in specials if t not in names.values()]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, extra_special_tokens=media, **names)


def special_token_ids(tokenizer, family: str) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIALS[family]}
    if family.startswith("qwen"):
        return dict(
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    return dict(image_token_index=ids["<image>"], video_token_index=ids["<video>"])


def _text_config(tokenizer, text=None, **extra) -> dict:
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return {**_TEXT, **special, **extra, **(text or {})}


def _config(family: str, tokenizer, text=None, vision=None) -> transformers.PreTrainedConfig:
    """The tiny config of `family`; `text` / `vision` override entries of its text / vision config."""
    config = _base_config(family, tokenizer, text)
    for key, value in (vision or {}).items():
        setattr(config.vision_config, key, value)
    return config


def _base_config(family: str, tokenizer, text=None) -> transformers.PreTrainedConfig:
    ids = special_token_ids(tokenizer, family)
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]  # 32
    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig(
            text_config=_text_config(
                tokenizer, text, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 6, 6])
            ),
            vision_config=dict(
                depth=2, embed_dim=64, hidden_size=_TEXT["hidden_size"], num_heads=4, mlp_ratio=2, patch_size=_PATCH
            ),
            **ids,
        )
    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(
            text_config=_text_config(
                tokenizer, text, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 6, 6])
            ),
            # Block 0 attends within 112 px windows (a whole 56 or 112 px frame), block 1 attends globally,
            # the real model's pattern of windowed blocks followed by a full-attention block.
            vision_config=dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=4,
                patch_size=_PATCH,
                out_hidden_size=_TEXT["hidden_size"],
                window_size=112,
                fullatt_block_indexes=[1],
            ),
            **ids,
        )
    if family == "qwen3_vl":
        return transformers.Qwen3VLConfig(
            text_config=_text_config(
                tokenizer,
                text,
                head_dim=head_dim,
                rope_parameters=dict(
                    rope_type="default", rope_theta=10000.0, mrope_section=[6, 5, 5], mrope_interleaved=True
                ),
            ),
            # Deepstack taps both vision blocks so their features are injected into both LLM layers.
            vision_config=dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=4,
                patch_size=_PATCH,
                out_hidden_size=_TEXT["hidden_size"],
                num_position_embeddings=64,
                deepstack_visual_indexes=[0, 1],
            ),
            **ids,
        )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_VISION_SIZE,
        patch_size=_PATCH,
    )
    if family == "llava_onevision":
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision),
            text_config=dict(model_type="qwen2", **_text_config(tokenizer, text)),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=_llava_pinpoints(),
            **ids,
        )
    if family == "llava_next_video":
        grid = _VISION_SIZE // _PATCH
        return transformers.LlavaNextVideoConfig(
            vision_config=dict(model_type="clip_vision_model", projection_dim=64, **vision),
            text_config=dict(model_type="llama", **_text_config(tokenizer, text)),
            vision_feature_select_strategy="default",  # drops CLIP's CLS token
            vision_feature_layer=-2,
            image_grid_pinpoints=_llava_pinpoints(),
            spatial_pool_stride=2,
            image_seq_length=grid * grid,
            video_seq_length=(grid // 2) ** 2 * 8,  # informational: tokens of an 8-frame clip
            **ids,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _llava_pinpoints() -> list[list[int]]:
    """AnyRes grid: 1x1, 1x2, 2x1 and 2x2 tiles of the vision tower's input size."""
    s = _VISION_SIZE
    return [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


def _processor(family: str, tokenizer):
    """The family's real processor class, sized to the tiny vision tower."""
    template = CHAT_TEMPLATES[family]
    if family.startswith("qwen"):
        # Sides snap to multiples of 28 (patch 14 x merge 2), so 56 and 112 px frames keep their size;
        # larger frames are scaled down to at most 224x224 worth of pixels.
        if family == "qwen3_vl":
            # Qwen3-VL budgets pixels over the whole clip (T x H x W): up to 64 frames of 224x224 stay unscaled.
            mean_std = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
            video = transformers.Qwen3VLVideoProcessor(
                size={"shortest_edge": 2 * 28 * 28, "longest_edge": 64 * 224 * 224},
                patch_size=_PATCH,
                cap_pixels_per_frame=False,
                **mean_std,
            )
        else:
            mean_std = {}
            video = transformers.Qwen2VLVideoProcessor(
                min_pixels=28 * 28, max_pixels=224 * 224, patch_size=_PATCH, cap_pixels_per_frame=False
            )
        image = transformers.Qwen2VLImageProcessor(
            min_pixels=28 * 28, max_pixels=224 * 224, patch_size=_PATCH, **mean_std
        )
        cls = {
            "qwen2_vl": transformers.Qwen2VLProcessor,
            "qwen2_5_vl": transformers.Qwen2_5_VLProcessor,
            "qwen3_vl": transformers.Qwen3VLProcessor,
        }[family]
        return cls(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=template)
    square = {"height": _VISION_SIZE, "width": _VISION_SIZE}
    num_patches = (_VISION_SIZE // _PATCH) ** 2
    if family == "llava_onevision":
        return transformers.LlavaOnevisionProcessor(
            image_processor=transformers.LlavaOnevisionImageProcessor(
                size=square, image_grid_pinpoints=_llava_pinpoints()
            ),
            tokenizer=tokenizer,
            video_processor=transformers.LlavaOnevisionVideoProcessor(size=square),
            num_image_tokens=num_patches,
            vision_feature_select_strategy="full",
            chat_template=template,
        )
    return transformers.LlavaNextVideoProcessor(
        video_processor=transformers.LlavaNextVideoVideoProcessor(
            size={"shortest_edge": _VISION_SIZE}, crop_size=square
        ),
        image_processor=transformers.LlavaNextImageProcessor(
            size={"shortest_edge": _VISION_SIZE}, crop_size=square, image_grid_pinpoints=_llava_pinpoints()
        ),
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=template,
    )


MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
}


def tiny_model_and_processor(family: str, *, seed: int = 0, text_config=None, vision_config=None, corpus=None):
    """A random-weight tiny `family` model (eval mode) and its processor, in memory.

    text_config / vision_config: dicts that override the tiny defaults (e.g. num_hidden_layers=4);
    corpus: texts the BPE tokenizer is trained on (default: a small generic corpus). Deterministic given `seed`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    tokenizer = train_tokenizer(family, corpus if corpus is not None else _CORPUS)
    config = _config(family, tokenizer, text_config, vision_config)
    torch.manual_seed(seed)
    model = getattr(transformers, MODEL_CLASSES[family])(config).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    return model, _processor(family, tokenizer)


def build_tiny_model(family: str, path, *, seed: int = 0) -> pathlib.Path:
    """Build a random-weight tiny `family` model + processor + tokenizer and save them to `path`.

    Deterministic given `seed`. Returns `path` as a Path; loads with `from_pretrained` / `AutoProcessor`.
    """
    path = pathlib.Path(path)
    model, processor = tiny_model_and_processor(family, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / _MARKER).write_text(json.dumps({"family": family, "seed": seed, "version": _TINY_VERSION}))
    return path


def _default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("VIDPRESS_CACHE") or pathlib.Path.home() / ".cache" / "vidpress" / "tiny")


def _is_current(path: pathlib.Path, family: str) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"family": family, "seed": 0, "version": _TINY_VERSION}


def load_tiny(family: str, *, attn_implementation: str = "eager", cache_dir=None):
    """Return `(model.eval(), processor)` for `family`, building it into `cache_dir/<family>` on first use.

    `cache_dir` defaults to `$VIDPRESS_CACHE` or `~/.cache/vidpress/tiny`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    root = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = root / family
    if not _is_current(path, family):
        root.mkdir(parents=True, exist_ok=True)
        # Build beside the target and move it in, so concurrent test workers never load a half-written model.
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
        try:
            build_tiny_model(family, tmp)
            if not _is_current(path, family):  # another process may have finished first
                shutil.rmtree(path, ignore_errors=True)
                os.replace(tmp, path)
        except OSError:
            if not _is_current(path, family):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    model_cls = getattr(transformers, MODEL_CLASSES[family])
    model = model_cls.from_pretrained(path, attn_implementation=attn_implementation)
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model.eval(), processor


_COLOURS = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40], [240, 240, 240], [200, 60, 220]], dtype=np.uint8
)


def _scene(rng: np.random.RandomState, height: int, width: int):
    """Random dark background plus 2-3 coloured squares: (background [H,W,3], [(colour, side, y, x, dy, dx)])."""
    background = rng.randint(0, 40, size=(1, 1, 3)) + rng.randint(0, 12, size=(height, width, 3))
    squares = []
    for colour in rng.choice(len(_COLOURS), size=rng.randint(2, 4), replace=False):
        side = rng.randint(max(2, min(height, width) // 8), max(3, min(height, width) // 3))
        y, x = rng.randint(0, height - side + 1), rng.randint(0, width - side + 1)
        dy, dx = rng.randint(-4, 5, size=2)
        squares.append((_COLOURS[colour], side, y, x, dy, dx))
    return background.astype(np.uint8), squares


def _draw(background: np.ndarray, squares, step: int) -> np.ndarray:
    frame = background.copy()
    height, width = frame.shape[:2]
    for colour, side, y, x, dy, dx in squares:
        # Bounce off the borders so squares stay in view for any number of frames.
        y0 = _bounce(y + dy * step, height - side)
        x0 = _bounce(x + dx * step, width - side)
        frame[y0 : y0 + side, x0 : x0 + side] = colour
    return frame


def _bounce(pos: int, span: int) -> int:
    if span <= 0:
        return 0
    pos %= 2 * span
    return pos if pos <= span else 2 * span - pos


def tiny_video(num_frames: int = 8, height: int = 56, width: int = 56, seed: int = 0) -> np.ndarray:
    """Deterministic clip of coloured squares moving over a dark background: uint8 [T, H, W, 3]."""
    background, squares = _scene(np.random.RandomState(seed), height, width)
    return np.stack([_draw(background, squares, t) for t in range(num_frames)])


def tiny_image(height: int = 56, width: int = 56, seed: int = 0) -> np.ndarray:
    """Deterministic still of coloured squares on a dark background: uint8 [H, W, 3]."""
    background, squares = _scene(np.random.RandomState(seed + 10_000), height, width)
    return _draw(background, squares, 0)


def _as_list(item) -> list:
    """An array (one video / image), a list of arrays, or None -> list of arrays."""
    if item is None:
        return []
    return [item] if hasattr(item, "ndim") else list(item)


def _per_sample(items, batch: int, batched: bool) -> list[list]:
    """Normalise `videos` / `images` to one list of arrays per sample."""
    if not batched:
        return [[x for entry in _as_list(items) for x in _as_list(entry)]]
    if items is None:
        return [[] for _ in range(batch)]
    if len(items) != batch:
        raise ValueError(f"got {len(items)} video/image entries for a batch of {batch} questions")
    return [_as_list(entry) for entry in items]


# LLaVA processors return pixel_values_videos as one [N, T, C, H, W] tensor (Qwen ones flatten patches).
_STACKED_VIDEO_PROCESSORS = (transformers.LlavaOnevisionProcessor, transformers.LlavaNextVideoProcessor)


def make_inputs(
    processor,
    videos: list,
    question: str | list[str] = "What happens?",
    images: list | None = None,
    padding_side: str = "left",
    fps: float = 2.0,
):
    """Model inputs for one prompt, or a batch, built from the processor's chat template.

    `videos` holds uint8 [T, H, W, 3] arrays. With a single `question` every video (and image) goes into that
    one prompt, images first; with a list of questions, entry i of `videos` / `images` (an array, a list of
    arrays, or None) belongs to sample i, and prompts are padded on `padding_side`. Frames are used as given
    (`do_sample_frames=False`) and described as sampled at `fps` (Qwen2.5-VL derives temporal positions and
    Qwen3-VL frame timestamps from it). LLaVA processors stack videos, so all videos of one call must have the
    same frame count there (ValueError otherwise).
    Returns the processor's BatchFeature: `input_ids` / `attention_mask` [B, L] plus pixel values and grids.
    """
    batched = not isinstance(question, str)
    questions = list(question) if batched else [question]
    sample_videos = _per_sample(videos, len(questions), batched)
    sample_images = _per_sample(images, len(questions), batched)
    prompts = []
    for q, vids, imgs in zip(questions, sample_videos, sample_images):
        content = [{"type": "image"} for _ in imgs] + [{"type": "video"} for _ in vids] + [{"type": "text", "text": q}]
        message = [{"role": "user", "content": content}]
        prompts.append(processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False))
    flat_videos = [np.asarray(v) for vids in sample_videos for v in vids]
    flat_images = [np.asarray(i) for imgs in sample_images for i in imgs]
    if isinstance(processor, _STACKED_VIDEO_PROCESSORS) and len({len(v) for v in flat_videos}) > 1:
        raise ValueError(
            f"{type(processor).__name__} stacks all videos of a call into one [N, T, C, H, W] tensor, so they "
            f"need the same frame count; got {[len(v) for v in flat_videos]}"
        )
    kwargs = {}
    if flat_videos:
        kwargs.update(
            videos=flat_videos,
            do_sample_frames=False,
            video_metadata=[
                VideoMetadata(
                    total_num_frames=len(v),
                    fps=fps,
                    height=v.shape[1],
                    width=v.shape[2],
                    duration=len(v) / fps,
                    frames_indices=list(range(len(v))),
                )
                for v in flat_videos
            ],
        )
    if flat_images:
        kwargs["images"] = flat_images
    return processor(text=prompts, return_tensors="pt", padding=True, padding_side=padding_side, **kwargs)
