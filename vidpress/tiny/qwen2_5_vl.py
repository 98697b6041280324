"""Qwen2.5-VL: Qwen2-VL's tokens, template and processors, with a windowed-attention vision tower."""

from __future__ import annotations

import transformers

from vidpress.tiny.family import PATCH, TEXT
from vidpress.tiny.qwen2_vl import mrope_text_config, qwen_family, token_ids


def _config(tokenizer, text=None) -> transformers.Qwen2_5_VLConfig:
    return transformers.Qwen2_5_VLConfig(
        text_config=mrope_text_config(tokenizer, text),
        # Block 0 attends within 112 px windows (a whole 56 or 112 px frame), block 1 attends globally,
        # the real model's pattern of windowed blocks followed by a full-attention block.
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            patch_size=PATCH,
            out_hidden_size=TEXT["hidden_size"],
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        **token_ids(tokenizer),
    )


FAMILY = qwen_family("Qwen2_5_VLForConditionalGeneration", _config, transformers.Qwen2_5_VLProcessor)
