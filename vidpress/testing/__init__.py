"""Test support: the tiny random-weight models of every family (`vidpress.tiny`, re-exported here) and
`make_inputs`, a batch of videos and questions as model inputs. Production code imports `vidpress.tiny`, never this
package."""

from __future__ import annotations

from vidpress.testing.inputs import make_inputs
from vidpress.tiny import (
    CHAT_TEMPLATES,
    FAMILIES,
    MODEL_CLASSES,
    Family,
    build_tiny_model,
    load_tiny,
    special_token_ids,
    tiny_image,
    tiny_model_and_processor,
    tiny_video,
    train_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATES", "FAMILIES", "MODEL_CLASSES", "Family", "build_tiny_model", "load_tiny", "make_inputs",
    "special_token_ids", "tiny_image", "tiny_model_and_processor", "tiny_video", "train_tokenizer",
]
