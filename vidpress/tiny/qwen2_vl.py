"""Qwen2-VL, and the Qwen pieces Qwen2.5-VL and Qwen3-VL reuse: special tokens, chat template, processor."""

from __future__ import annotations

import transformers

from vidpress.tiny.family import PATCH, TEXT, Family, text_config

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TOKEN_NAMES = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")

# Chat templates reproduce each family's prompt layout. Written on one line with explicit '\n' because
# transformers renders them with trim_blocks, which would eat newlines that follow a block tag.
# `default_system` (set by the prefix each family adds) decides whether a default system prompt comes first.
QWEN_TEMPLATE = (
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
# Qwen2-VL and Qwen2.5-VL prepend a default system prompt; Qwen3-VL does not.
CHAT_TEMPLATE = "{% set default_system = true %}" + QWEN_TEMPLATE


def token_ids(tokenizer) -> dict:
    """The config's media-token ids of a Qwen family."""
    return dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )


def mrope_text_config(tokenizer, text=None) -> dict:
    """The tiny text config with Qwen2-VL's multimodal RoPE: 4, 6, 6 of the 16 rotary pairs for time, height, width."""
    return text_config(
        tokenizer, text, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 6, 6])
    )


def qwen_processor(cls, tokenizer, chat_template: str, video, **image_kwargs):
    """The Qwen processor class `cls` with the tiny image processor and the video processor `video`.

    Sides snap to multiples of 28 (patch 14 x merge 2), so 56 and 112 px frames keep their size; larger frames are
    scaled down to at most 224x224 worth of pixels. image_kwargs: more image-processor arguments (normalisation).
    """
    image = transformers.Qwen2VLImageProcessor(
        min_pixels=28 * 28, max_pixels=224 * 224, patch_size=PATCH, **image_kwargs
    )
    return cls(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=chat_template)


def video_processor() -> transformers.Qwen2VLVideoProcessor:
    """Qwen2-VL's video processor (Qwen2.5-VL's too), with the image processor's pixel bounds per frame."""
    return transformers.Qwen2VLVideoProcessor(
        min_pixels=28 * 28, max_pixels=224 * 224, patch_size=PATCH, cap_pixels_per_frame=False
    )


def _config(tokenizer, text=None) -> transformers.Qwen2VLConfig:
    return transformers.Qwen2VLConfig(
        text_config=mrope_text_config(tokenizer, text),
        vision_config=dict(
            depth=2, embed_dim=64, hidden_size=TEXT["hidden_size"], num_heads=4, mlp_ratio=2, patch_size=PATCH
        ),
        **token_ids(tokenizer),
    )


def qwen_family(model_class: str, config, processor_class=None, processor=None,
                chat_template: str = CHAT_TEMPLATE) -> Family:
    """A Qwen-VL family record: Qwen's special tokens, names and token ids, `chat_template`, the model's `config`
    builder, and its processor: `processor(tokenizer)`, or `processor_class` with Qwen2-VL's video processor."""
    if processor is None:
        def processor(tokenizer):
            return qwen_processor(processor_class, tokenizer, chat_template, video_processor())

    return Family(model_class=model_class, specials=SPECIALS, token_names=TOKEN_NAMES, chat_template=chat_template,
                  token_ids=token_ids, config=config, processor=processor)


FAMILY = qwen_family("Qwen2VLForConditionalGeneration", _config, transformers.Qwen2VLProcessor)
