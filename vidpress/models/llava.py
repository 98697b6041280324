"""LLaVA-OneVision and LLaVA-NeXT-Video: per-frame pooled grids of projected vision tokens, plain 1-D RoPE."""

from __future__ import annotations

import math

import torch

from vidpress.models.base import Adapter, VideoLayout
from vidpress.types import VideoTokens


class LlavaVideoAdapter(Adapter):
    """Shared by both LLaVA families: every frame becomes a fixed square grid of pooled tokens."""

    #: rows after the T * M frame tokens that are always kept
    num_extra = 0

    def frame_grid(self) -> tuple[int, int]:
        """(h, w) of one frame's pooled token grid, from the config."""
        raise NotImplementedError

    def video_layouts(self, output, inputs: dict) -> list[VideoLayout]:
        h, w = self.frame_grid()
        layouts = []
        for rows in self.per_video_rows(output):
            frame_rows = rows.shape[0] - self.num_extra
            if frame_rows % (h * w):
                raise ValueError(f"{self.family}: {frame_rows} video features do not split into frames of {h}x{w} tokens")
            T = frame_rows // (h * w)
            tokens = VideoTokens(rows[:frame_rows].view(T, h * w, -1), (T, h, w))
            layouts.append(VideoLayout(tokens, rows[frame_rows:] if self.num_extra else None))
        return layouts

    def per_video_rows(self, output) -> list[torch.Tensor]:
        """Each video's rows [N_v, D] of the encoder output."""
        return list(output.pooler_output)

    def full_position_ids(self, inputs: dict, attention_mask: torch.Tensor, for_generate: bool) -> torch.Tensor:
        if for_generate:  # what generate builds: positions count real tokens only
            return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        # a plain forward without position_ids numbers every slot, padding included
        B, L = inputs["input_ids"].shape
        return torch.arange(L, device=attention_mask.device).expand(B, L)


class LlavaOnevisionAdapter(LlavaVideoAdapter):
    """LLaVA-OneVision: SigLIP -> projector -> 2x2 bilinear pooling per frame, then one newline token per video."""

    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"
    num_extra = 1

    def frame_grid(self) -> tuple[int, int]:
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        return side, side  # 2x2 bilinear pooling, rounding up

    def pack_videos(self, output, kept_rows, kept_features):
        # the model flattens pooler_output [V, N, D] over (V, N); one row of all videos gives the same order
        return type(output)(pooler_output=torch.cat(kept_features)[None])


class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """LLaVA-NeXT-Video: CLIP -> pooling resampler -> projector; no newline token."""

    model_types = ("llava_next_video",)
    family = "LLaVA-NeXT-Video"

    def frame_grid(self) -> tuple[int, int]:
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size // self.config.spatial_pool_stride
        return side, side

    def pack_videos(self, output, kept_rows, kept_features):
        # the model flattens each entry over its first two dims: give each video as [1, K_v, D]
        return type(output)(pooler_output=tuple(features[None] for features in kept_features))
