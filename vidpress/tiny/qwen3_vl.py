"""Qwen3-VL: Qwen's tokens and template without the default system prompt, interleaved MRoPE, deepstack.

transformers 5.23 expands only the <|video_pad|> of the template's "<|vision_start|><|video_pad|><|vision_end|>",
so that outer pair stays around the per-frame "<t seconds><|vision_start|>...<|vision_end|>" groups.
"""

from __future__ import annotations

import transformers

from vidpress.tiny.family import PATCH, TEXT, text_config
from vidpress.tiny.qwen2_vl import QWEN_TEMPLATE, qwen_family, qwen_processor, token_ids

CHAT_TEMPLATE = "{% set default_system = false %}" + QWEN_TEMPLATE


def _config(tokenizer, text=None) -> transformers.Qwen3VLConfig:
    return transformers.Qwen3VLConfig(
        text_config=text_config(
            tokenizer,
            text,
            head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"],  # 32
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
            patch_size=PATCH,
            out_hidden_size=TEXT["hidden_size"],
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        **token_ids(tokenizer),
    )


def _processor(tokenizer) -> transformers.Qwen3VLProcessor:
    # Qwen3-VL budgets pixels over the whole clip (T x H x W): up to 64 frames of 224x224 stay unscaled.
    mean_std = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video = transformers.Qwen3VLVideoProcessor(
        size={"shortest_edge": 2 * 28 * 28, "longest_edge": 64 * 224 * 224},
        patch_size=PATCH,
        cap_pixels_per_frame=False,
        **mean_std,
    )
    return qwen_processor(transformers.Qwen3VLProcessor, tokenizer, CHAT_TEMPLATE, video, **mean_std)


FAMILY = qwen_family("Qwen3VLForConditionalGeneration", _config, processor=_processor, chat_template=CHAT_TEMPLATE)
