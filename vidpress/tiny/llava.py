"""What the two LLaVA families share: the fixed-size vision tower, its AnyRes grid, the media-token ids."""

from __future__ import annotations

from vidpress.tiny.family import PATCH

VISION_SIZE = 56  # fixed input side of the LLaVA vision towers (SigLIP / CLIP)
GRID = VISION_SIZE // PATCH  # 4: patches per side of one frame


def vision_config() -> dict:
    """The tiny vision tower (SigLIP or CLIP): 2 layers, 64 wide, VISION_SIZE px input in PATCH px patches."""
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=VISION_SIZE,
        patch_size=PATCH,
    )


def pinpoints() -> list[list[int]]:
    """AnyRes grid: 1x1, 1x2, 2x1 and 2x2 tiles of the vision tower's input size."""
    s = VISION_SIZE
    return [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


def token_ids(tokenizer) -> dict:
    """The config's media-token ids of a LLaVA family."""
    return dict(
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    )
