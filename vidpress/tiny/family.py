"""The record each family module fills (`Family`), and the tiny sizes every family shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import transformers

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PATCH = 14  # every tiny vision tower uses 14 px patches, so 56 px frames give a 4x4 patch grid


@dataclass(frozen=True)
class Family:
    """What vidpress.tiny knows of one model family; `tiny/<family>.py` defines one as FAMILY.

    specials: the special tokens, given ids 0..k-1 in this order.
    token_names: the tokenizer's named special tokens (eos_token, pad_token, ...); the other specials are media
        tokens.
    prepend_bos: the tokenizer writes token_names["bos_token"] before every encoded text (Llama tokenizers).
    token_ids(tokenizer): the config's media-token id arguments, e.g. {"video_token_id": 6, ...}.
    config(tokenizer, text): the tiny config; `text` (dict or None) overrides entries of its text config.
    processor(tokenizer): the family's real processor class, sized to the tiny vision tower.
    """

    model_class: str  # the transformers class name, e.g. "Qwen2VLForConditionalGeneration"
    specials: tuple[str, ...]
    token_names: dict[str, str]
    chat_template: str
    token_ids: Callable[[transformers.PreTrainedTokenizerBase], dict]
    config: Callable[[transformers.PreTrainedTokenizerBase, dict | None], transformers.PreTrainedConfig]
    processor: Callable[[transformers.PreTrainedTokenizerBase], transformers.ProcessorMixin]
    prepend_bos: bool = False


def text_config(tokenizer, text=None, **extra) -> dict:
    """The tiny text config: TEXT, the tokenizer's vocabulary size and ids, then `extra`, then `text` overrides."""
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return {**TEXT, **special, **extra, **(text or {})}
