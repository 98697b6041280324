"""LLaVA-OneVision and LLaVA-NeXT-Video: per-frame pooled grids of projected vision tokens, plain 1-D RoPE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidpress.models.base import Adapter, VideoLayout, pick_block
from vidpress.models.registry import register_adapter
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
                raise ValueError(
                    f"{self.family}: {frame_rows} video features do not split into frames of {h}x{w} tokens")
            T = frame_rows // (h * w)
            tokens = VideoTokens(rows[:frame_rows].view(T, h * w, -1), (T, h, w))
            layouts.append(VideoLayout(tokens, rows[frame_rows:] if self.num_extra else None))
        return layouts

    def per_video_rows(self, output) -> list[torch.Tensor]:
        """Each video's rows [N_v, D] of the encoder output."""
        return list(output.pooler_output)

    # -- vision-encoder statistics -------------------------------------------------------------------------
    def vision_layers(self):
        """The vision tower's encoder layers (SigLIP / CLIP: vision_model.encoder.layers[i].self_attn)."""
        tower = self.base.vision_tower
        layers = getattr(getattr(getattr(tower, "vision_model", tower), "encoder", None), "layers", None)
        if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
            raise ValueError(
                f"{self.family}: the vision tower {type(tower).__name__} has no encoder.layers[i].self_attn, "
                "so vidpress cannot record its attention statistics"
            )
        return layers

    def feature_select(self, inputs: dict) -> tuple[int | list[int], str]:
        """(vision_feature_layer, vision_feature_select_strategy) of this call, as get_video_features resolves them."""
        layer, strategy = inputs.get("vision_feature_layer"), inputs.get("vision_feature_select_strategy")
        return (self.config.vision_feature_layer if layer is None else layer,
                self.config.vision_feature_select_strategy if strategy is None else strategy)

    def vision_attention(self, layer: int | None) -> torch.nn.Module:
        layers = self.vision_layers()
        if layer is None:
            # The default: the block whose output the model reads. hidden_states[k] is the output of block k - 1
            # (k = 0: the embeddings), so negative k names the same block as negative block indexing; of several
            # feature layers, the deepest.
            feature_layers = self.config.vision_feature_layer
            feature_layers = [feature_layers] if isinstance(feature_layers, int) else list(feature_layers)
            blocks = [k - 1 if k > 0 else len(layers) + k for k in feature_layers if k != 0]
            if not blocks:
                raise ValueError(
                    f"{self.family}: vision_feature_layer={self.config.vision_feature_layer} reads the patch "
                    "embeddings, which have no attention; pass vision_layer"
                )
            layer = max(blocks)
        return pick_block(layers, layer, self.family).self_attn

    def vision_token_stats(self, recorder, inputs: dict, layouts: list[VideoLayout]) -> list[dict]:
        """Per-patch statistics of every frame -> that frame's LLM tokens: the [CLS] query's attention where the
        model drops a [CLS] token ("default" strategy on a tower with a class embedding; VisionZip's rule), else the
        mean attention each patch receives; "vision_received" is always that mean (over heads and every query, [CLS]
        included); the first token dropped as the "default" strategy drops it; then the family's spatial pooling
        (`pool_stats`)."""
        received, first_row, keys = recorder.stacked()  # [F, n], [F, n], [F, n, d], frames of all videos in order
        _, strategy = self.feature_select(inputs)
        tower = self.base.vision_tower
        has_cls = hasattr(getattr(getattr(tower, "vision_model", tower), "embeddings", None), "class_embedding")
        attention = first_row if strategy == "default" and has_cls else received
        if strategy == "default":
            attention, keys, received = attention[:, 1:], keys[:, 1:], received[:, 1:]
        side = math.isqrt(attention.shape[1])
        if side * side != attention.shape[1]:
            raise ValueError(f"{self.family}: {attention.shape[1]} vision tokens per frame do not form a square grid")
        stats = self.pool_stats(torch.cat([attention[..., None], received[..., None], keys], dim=-1)
                                .view(-1, side, side, 2 + keys.shape[-1]))
        frames = sum(layout.tokens.num_frames for layout in layouts)
        if stats.shape[0] != frames:
            raise RuntimeError(
                f"vidpress: recorded {stats.shape[0]} frames in the vision encoder but the videos hold {frames}")
        out, start = [], 0
        for layout in layouts:
            T, M = layout.tokens.num_frames, layout.tokens.tokens_per_frame
            chunk = stats[start : start + T].reshape(T, M, -1)
            out.append({"vision_attention": chunk[..., 0], "vision_received": chunk[..., 1],
                        "vision_keys": chunk[..., 2:]})
            start += T
        return out

    def pool_stats(self, grid: torch.Tensor) -> torch.Tensor:
        """Per-patch statistics [F, h, w, C] -> per-token [F, h', w', C], pooled as the model pools features."""
        raise NotImplementedError

    def full_position_ids(self, inputs: dict, attention_mask: torch.Tensor, for_generate: bool,
                          embeds_only: bool = False) -> torch.Tensor:
        if for_generate:  # what generate builds: positions count real tokens only
            return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        # a plain forward without position_ids numbers every slot, padding included
        B, L = inputs["input_ids"].shape
        return torch.arange(L, device=attention_mask.device).expand(B, L)


@register_adapter
class LlavaOnevisionAdapter(LlavaVideoAdapter):
    """LLaVA-OneVision: SigLIP -> projector -> 2x2 bilinear pooling per frame, then one newline token per video."""

    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"
    num_extra = 1

    def frame_grid(self) -> tuple[int, int]:
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        return side, side  # 2x2 bilinear pooling, rounding up

    def pack_videos(self, output, kept_rows, kept_features):
        # The model flattens pooler_output [V, N, D] over (V, N), so any split of the rows gives the same order; it
        # must be one row per entry [K, 1, D]: generate's multimodal expansion (beams, several return sequences)
        # finds each sample's entries by matching entry lengths to placeholder counts, and videos pressed to
        # different lengths cannot be stacked per video.
        return type(output)(pooler_output=torch.cat(kept_features)[:, None])

    def pool_stats(self, grid: torch.Tensor) -> torch.Tensor:
        # the model's apply_pooling: bilinear resize to ceil(h/2) x ceil(w/2)
        h, w = grid.shape[1:3]
        pooled = F.interpolate(grid.permute(0, 3, 1, 2), size=[math.ceil(h / 2), math.ceil(w / 2)], mode="bilinear")
        return pooled.permute(0, 2, 3, 1)


@register_adapter
class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """LLaVA-NeXT-Video: CLIP -> pooling resampler -> projector; no newline token."""

    model_types = ("llava_next_video",)
    family = "LLaVA-NeXT-Video"

    def frame_grid(self) -> tuple[int, int]:
        side = (self.config.vision_config.image_size // self.config.vision_config.patch_size
                // self.config.spatial_pool_stride)
        return side, side

    def per_video_rows(self, output) -> list[torch.Tensor]:
        # transformers 5.23: [V, T * M, D]; 5.19: a tuple of [T, M, D] per video
        return [rows.reshape(-1, rows.shape[-1]) for rows in output.pooler_output]

    def pack_videos(self, output, kept_rows, kept_features):
        # The model flattens each entry over its first two dims and concatenates them. One row per entry
        # [K, 1, 1, D], so that generate's multimodal expansion (beams, several return sequences) can split the rows
        # per sample by matching entry lengths to placeholder counts.
        return type(output)(pooler_output=torch.cat(kept_features)[:, None, None])

    def pool_stats(self, grid: torch.Tensor) -> torch.Tensor:
        # the resampler pools stride x stride windows ("average" mode; "max" / "conv" also map each window to one
        # token, whose statistics are taken as the window's mean)
        stride = self.config.spatial_pool_stride
        return F.avg_pool2d(grid.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)
