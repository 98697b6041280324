"""LLaVA-OneVision and LLaVA-NeXT-Video: per-frame pooled grids of projected vision tokens, plain 1-D RoPE."""

from __future__ import annotations

import math

import torch

from vidpress.models.base import Adapter, VideoLayout
from vidpress.types import VideoTokens


class LlavaVideoAdapter(Adapter):
    """Shared by both LLaVA families: frames come as pixel_values_videos [V, T, C, H, W]."""

    #: rows after the T * M frame tokens that are always kept
    num_extra = 0

    def video_layouts(self, output, inputs: dict) -> list[VideoLayout]:
        if inputs.get("pixel_values_videos") is None:
            raise ValueError(f"{self.family}: pass pixel_values_videos (the frame count comes from its shape [V, T, C, H, W])")
        T = inputs["pixel_values_videos"].shape[1]
        layouts = []
        for rows in self.per_video_rows(output):
            frame_rows = rows.shape[0] - self.num_extra
            M = frame_rows // T
            side = math.isqrt(M)
            h, w = (side, side) if side * side == M else (1, M)
            tokens = VideoTokens(rows[:frame_rows].view(T, M, -1), (T, h, w))
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

    def pack_videos(self, output, kept_rows, kept_features):
        # the model flattens pooler_output [V, N, D] over (V, N); one row of all videos gives the same order
        return type(output)(pooler_output=torch.cat(kept_features)[None])


class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """LLaVA-NeXT-Video: CLIP -> pooling resampler -> projector; no newline token."""

    model_types = ("llava_next_video",)
    family = "LLaVA-NeXT-Video"

    def pack_videos(self, output, kept_rows, kept_features):
        # the model flattens each entry over its first two dims: give each video as [1, K_v, D]
        return type(output)(pooler_output=tuple(features[None] for features in kept_features))
