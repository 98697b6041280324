"""Qwen2-VL and Qwen2.5-VL: one tensor of merged tokens per video in (t, h, w) raster order; 3-D M-RoPE."""

from __future__ import annotations

import torch

from vidpress.models.base import Adapter, VideoLayout, pick_block
from vidpress.models.registry import register_adapter
from vidpress.types import VideoTokens


@register_adapter
class Qwen2VLAdapter(Adapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    family = "Qwen2-VL / Qwen2.5-VL"
    mrope = True
    precomputed_videos = True

    @property
    def merge(self) -> int:
        return self.config.vision_config.spatial_merge_size

    def video_layouts(self, output, inputs: dict) -> list[VideoLayout]:
        grids = inputs["video_grid_thw"]
        layouts = []
        for v, (features, grid) in enumerate(zip(output.pooler_output, grids)):
            t, h, w = int(grid[0]), int(grid[1]) // self.merge, int(grid[2]) // self.merge
            layouts.append(
                VideoLayout(VideoTokens(features.view(t, h * w, -1), (t, h, w), self.timestamps(inputs, v, t))))
        return layouts

    def timestamps(self, inputs: dict, video: int, num_frames: int) -> torch.Tensor | None:
        seconds = inputs.get("second_per_grid_ts")
        if seconds is None:
            return None
        return torch.arange(num_frames, dtype=torch.float32) * float(seconds[video])

    def pack_videos(self, output, kept_rows, kept_features):
        return type(output)(pooler_output=tuple(kept_features))

    def vision_attention(self, layer: int | None) -> torch.nn.Module:
        # the merger reads the last block's output
        return pick_block(self.base.visual.blocks, -1 if layer is None else layer, self.family).attn

    def vision_token_stats(self, recorder, inputs: dict, layouts: list[VideoLayout]) -> list[dict]:
        """Per-patch statistics -> merged tokens: the vision attention runs per frame (non-flash implementations
        get one call per cu_seqlens chunk) over patches in the processor's order, where every spatial_merge_size^2
        consecutive patches form one merged token; a merged token gets their mean (no [CLS]: "vision_attention" and
        "vision_received" are both the attention received, mean over heads and queries). Qwen2.5-VL first permutes
        merged units into attention windows (`get_window_index`): undone here, as the model undoes it after its
        merger."""
        received, _, keys = recorder.packed()
        grids = inputs["video_grid_thw"]
        unit = self.merge**2
        if received.numel() != int(grids.prod(-1).sum()):
            raise RuntimeError(
                f"vidpress: recorded {received.numel()} vision tokens but the videos hold "
                f"{int(grids.prod(-1).sum())} patches"
            )
        received = received.view(-1, unit).mean(1)
        keys = keys.view(-1, unit, keys.shape[-1]).mean(1)
        order = self.merged_unit_order(grids)
        if order is not None:  # encoder order -> (t, h, w) raster order
            raster = torch.argsort(order.to(received.device))
            received, keys = received[raster], keys[raster]
        stats, start = [], 0
        for layout in layouts:
            T, M = layout.tokens.num_frames, layout.tokens.tokens_per_frame
            attention = received[start : start + T * M].view(T, M)
            stats.append({"vision_attention": attention, "vision_received": attention,
                          "vision_keys": keys[start : start + T * M].view(T, M, -1)})
            start += T * M
        return stats

    def merged_unit_order(self, grids: torch.Tensor) -> torch.Tensor | None:
        """Raster index of each merged unit in the encoder's block order (None: the raster order itself)."""
        if self.config.model_type != "qwen2_5_vl":
            return None
        visual = self.base.visual
        if hasattr(visual, "get_window_index"):  # transformers before the vision_utils helpers
            return visual.get_window_index(grids)[0]
        from transformers.vision_utils import get_vision_window_index

        vision = self.config.vision_config
        return get_vision_window_index(grids, vision.spatial_merge_size, vision.window_size, vision.patch_size)[0]

    def precomputed_video_inputs(self, features: list[torch.Tensor], grids: torch.Tensor,
                                 seconds_per_grid: torch.Tensor | None, input_ids: torch.Tensor) -> dict:
        """video_grid_thw, mm_token_type_ids (video tokens 2, the rest 0), second_per_grid_ts (with
        `seconds_per_grid`) and `mm_encoder_outputs` holding `features`, all on input_ids' device."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # Qwen3VLAdapter inherits this method but cannot run from these features (no DeepStack features)
        self.check_precomputed_videos("building model inputs from pre-computed video features")
        device = input_ids.device
        inputs = {
            "video_grid_thw": grids.to(device),
            "mm_token_type_ids": 2 * (input_ids == self.video_token_id).long(),
            "mm_encoder_outputs": {
                "video": BaseModelOutputWithPooling(pooler_output=tuple(f.to(device) for f in features))
            },
        }
        if seconds_per_grid is not None:
            inputs["second_per_grid_ts"] = seconds_per_grid.to(device)
        return inputs

    def patchify(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The video processor's layout of videos [B, F, C, H, W] that are already resized and normalised as it
        does (H, W multiples of p * m), with the model's vision-config sizes p = patch_size, tp =
        temporal_patch_size, m = spatial_merge_size. F is padded to a multiple of tp with the last frame, as the
        processor pads. Returns pixel_values_videos [B * F/tp * H/p * W/p, C * tp * p * p] (rows in merge-block
        order, columns (channel, frame, y, x)) and video_grid_thw LongTensor [B, 3] = (F/tp, H/p, W/p)."""
        vision = self.config.vision_config
        p, tp, m = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size
        if videos.dim() != 5 or videos.shape[2] != vision.in_channels:
            raise ValueError(f"{self.family}: patchify takes videos [B, F, C={vision.in_channels}, H, W]; got shape "
                             f"{tuple(videos.shape)}")
        B, F, C, H, W = videos.shape
        if H % (p * m) or W % (p * m):
            raise ValueError(f"{self.family}: frame height and width must be multiples of patch_size * "
                             f"spatial_merge_size = {p * m}; got {H}x{W} (resize them as the processor does)")
        if F % tp:
            videos = torch.cat([videos, videos[:, -1:].expand(-1, tp - F % tp, -1, -1, -1)], dim=1)
        t, h, w = videos.shape[1] // tp, H // p, W // p
        x = videos.reshape(B, t, tp, C, h // m, m, p, w // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # -> [B, t, h/m, w/m, m, m, C, tp, p, p]
        grid = torch.tensor([[t, h, w]] * B, dtype=torch.long, device=videos.device)
        return x.reshape(B * t * h * w, C * tp * p * p), grid

    def mm_token_type_ids(self, inputs: dict) -> torch.Tensor:
        if inputs.get("mm_token_type_ids") is not None:
            return inputs["mm_token_type_ids"]
        ids = inputs["input_ids"]
        # text 0, image 1, video 2: the convention of get_rope_index
        return (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()

    def full_position_ids(self, inputs: dict, attention_mask: torch.Tensor, for_generate: bool,
                          embeds_only: bool = False) -> torch.Tensor:
        """The model's own positions over the FULL sequence, so kept tokens keep their t/h/w ids: the 3-D rope
        index [3, B, L], storing its `rope_deltas` on the model as the unpressed call does (later decoding steps
        of a caller's own loop read them). With inputs_embeds alone the model has no ids to index: mirrored."""
        if embeds_only:
            if for_generate:  # generate falls back to text positions on all three axes, with zero deltas
                text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
                self.base.rope_deltas = torch.zeros(text.shape[0], 1, dtype=torch.long, device=text.device)
                return text[None].expand(3, -1, -1)
            B, L = attention_mask.shape
            positions = self.base.compute_3d_position_ids(
                input_ids=None, image_grid_thw=None, video_grid_thw=None, inputs_embeds=inputs["inputs_embeds"],
                attention_mask=attention_mask, past_key_values=None,
            )
            return torch.arange(L, device=attention_mask.device).expand(3, B, L) if positions is None else positions
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        rope, deltas = self.base.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=self.mm_token_type_ids(inputs), attention_mask=attention_mask,
            **kwargs
        )
        self.base.rope_deltas = deltas
        return rope  # [3, B, L]

    def finish_position_ids(self, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        # Row 0 holds plain text positions of the pruned sequence; the model builds its masks from it.
        text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return torch.cat([text[None], position_ids], dim=0)  # [4, B, L']


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: as Qwen2.5-VL, plus DeepStack features injected into early LLM layers, pruned with the same index."""

    model_types = ("qwen3_vl", "qwen3_vl_moe")
    family = "Qwen3-VL"
    deepstack = True
    # the model also reads every video's DeepStack features, which pre-computed [N_v, D] features lack
    precomputed_videos = False

    @property
    def min_prune_layer(self) -> int:
        # DeepStack adds features to the video positions after each of the first n layers: prune after them.
        return max(1, len(self.config.vision_config.deepstack_visual_indexes))

    def video_layouts(self, output, inputs: dict) -> list[VideoLayout]:
        layouts = super().video_layouts(output, inputs)
        for v, layout in enumerate(layouts):
            T, M = layout.tokens.num_frames, layout.tokens.tokens_per_frame
            layout.tokens.side_features = {
                f"deepstack.{level}": per_video[v].view(T, M, -1)
                for level, per_video in enumerate(output.deepstack_features)
            }
        return layouts

    def timestamps(self, inputs: dict, video: int, num_frames: int) -> torch.Tensor | None:
        return None  # Qwen3-VL writes timestamps into the text, not into positions

    def split_video_output(self, output) -> list[dict]:
        entries = super().split_video_output(output)
        for v, entry in enumerate(entries):
            entry["deepstack_features"] = [level[v] for level in output.deepstack_features]  # [N_v, D] per level
        return entries

    def pack_video_output(self, like, entries: list[dict]):
        packed = super().pack_video_output(like, entries)
        levels = len(entries[0]["deepstack_features"])
        packed["deepstack_features"] = [tuple(e["deepstack_features"][level] for e in entries)
                                        for level in range(levels)]
        return packed

    def pack_videos(self, output, kept_rows, kept_features):
        deepstack = [
            tuple(features[rows] for features, rows in zip(per_video, kept_rows))
            for per_video in output.deepstack_features
        ]
        return type(output)(pooler_output=tuple(kept_features), deepstack_features=deepstack)
