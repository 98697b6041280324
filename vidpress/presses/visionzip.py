"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv 2412.04467).

Dominant tokens are the ones that receive the most attention in one late vision-encoder layer; the other tokens are
merged, by the similarity of their keys in that layer, into contextual tokens at evenly strided targets. Acts on the
projector output, before the LLM; needs that vision layer's attention statistics, which `press(model)` records while
the model's own vision encoder runs (one encoder pass, any attention implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import (
    Press,
    check_compute_dtype,
    in_compute_dtype,
    keep_top_per_frame,
    register,
    token_budget,
)
from vidpress.types import Query, Selection, VideoTokens

# Frames per block in the similarity pass: [frames, M, M] similarities at a time.
_BLOCK_ELEMENTS = 1 << 24


@register("visionzip")
@dataclass
class VisionZipPress(Press):
    """VisionZip: dominant tokens by vision-encoder attention + contextual tokens merged by key similarity.

    Rule, per video of T frames x M tokens (every frame is one image to the vision encoder, so, as in the paper's
    per-image rule, each frame gets its own dominant and contextual tokens):
      1. Budget K = round(R * T * M), split over frames as evenly as possible: k_t = K // T, plus one for the
         K mod T evenly spaced frames.
      2. Dominant: the d_t = round(`dominant_ratio` * k_t) tokens of frame t with the highest "vision_attention"
         (attention received in the vision layer: the [CLS] query's where the encoder has a [CLS], else the mean over
         heads and queries), ties to the lower index. They keep their features.
      3. Contextual targets: the frame's other n_t = M - d_t tokens, in raster order; c_t = k_t - d_t of them at ranks
         arange(0, n_t, n_t // c_t)[:c_t] (released rule: stride n_t // c_t from the first, so when c_t does not
         divide n_t the last ranks are never targets).
      4. Every remaining token goes to the target whose "vision_keys" (head-averaged keys of the vision layer) are the
         most cosine-similar (ties to the earlier target). Released rule (`contextual_merge="add"`): the contextual
         feature is target + mean(assigned tokens) (the target alone when none are assigned);
         `contextual_merge="mean"` (vidpress before 0.x) takes the mean over the target and its assigned tokens.
         The feature sits at the target's position (`Selection.features`). With c_t = 0 the rest are dropped.
    Effective retention: exactly K / (T * M). With frame_budgets="vidcom2" (vidpress's composition with VidCom²'s
    budgets), k_t is VidCom²'s k[t] instead of the even split, and the effective retention sum k[t] / (T * M).

    The statistics come as VideoTokens side features "vision_attention" [T, M] and "vision_keys" [T, M, d], mapped
    from encoder patches to the LLM's tokens by the model adapter (mean over merged / pooled patches). Unlike the
    paper, which merges the encoder's hidden states before the projector, merging averages the projector output.

    Follows the released code exactly (targets, assignment, target + mean), apart from where the merge happens (above)
    and the per-frame budget split.

    Args:
        retention: R, fraction of video tokens kept (dominant + contextual).
        dominant_ratio: share of each frame's budget for dominant tokens (the paper's 54 of 64).
        vision_layer: vision-encoder block whose attention is used (Python indexing); None: the last block whose
            output the model uses (Qwen: the last block; LLaVA: the block of `config.vision_feature_layer`).
        contextual_merge: "add" (released: target + mean of assigned) or "mean" (mean of target and assigned).
        compute_dtype: "float32" (default) computes key similarities in float32; "model" in the keys' own dtype
            (bf16/fp16 on a half-precision model), as the released code does.
    """

    dominant_ratio: float = 54 / 64
    vision_layer: int | None = None
    contextual_merge: str = "add"
    compute_dtype: str = "float32"

    #: the adapter records vision-encoder attention statistics for this press (see `Adapter.encode_videos`)
    needs_vision_stats = True
    #: with frame_budgets="vidcom2", frame t's k[t] is split by `dominant_ratio` like the even split
    supports_frame_budgets = True

    def __post_init__(self):
        super().__post_init__()
        ratio = self.dominant_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"dominant_ratio must be a number in [0, 1]; got {ratio!r}")
        self.dominant_ratio = float(ratio)
        if self.vision_layer is not None and (
            isinstance(self.vision_layer, bool) or not isinstance(self.vision_layer, int)
        ):
            raise ValueError(f"vision_layer must be None or an integer block index; got {self.vision_layer!r}")
        if self.contextual_merge not in ("add", "mean"):
            raise ValueError(f"contextual_merge must be 'add' (released: target + mean of assigned) or 'mean'; "
                             f"got {self.contextual_merge!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def split_budget(self, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Tokens kept per frame [T]: round(R * T * M) split evenly, the remainder to evenly spaced frames."""
        budget = token_budget(self.retention, num_frames * tokens_per_frame)
        base, extra = divmod(budget, num_frames)
        t = torch.arange(num_frames)
        return base + ((t + 1) * extra // num_frames - t * extra // num_frames)

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        attention, keys = _vision_stats(tokens)
        T, M = tokens.num_frames, tokens.tokens_per_frame
        device = tokens.features.device
        budgets = self.frame_budgets_fca(tokens)
        budgets = self.split_budget(T, M) if budgets is None else budgets
        dominant_budgets = torch.round(self.dominant_ratio * budgets.double()).long()
        dominant = torch.zeros(T * M, dtype=torch.bool, device=device)
        dominant[keep_top_per_frame(attention.float(), dominant_budgets)] = True
        dominant = dominant.view(T, M)

        # Strided targets among the rest (released): rank r (in raster order) is a target iff r = i * (n // c), i < c.
        rest = ~dominant
        n = (M - dominant_budgets).to(device)[:, None]
        c = (budgets - dominant_budgets).to(device)[:, None]
        rank = rest.long().cumsum(1) - 1
        stride = (n // c.clamp(min=1)).clamp(min=1)
        target = rest & (c > 0) & (rank % stride == 0) & (rank // stride < c)
        merged_away = rest & ~target & (c > 0)

        # Each merged-away token joins its most key-similar target of the same frame.
        unit = torch.nn.functional.normalize(in_compute_dtype(keys, self.compute_dtype), dim=-1)
        assign = torch.zeros(T, M, dtype=torch.long, device=device)
        step = max(1, _BLOCK_ELEMENTS // (M * M))
        for start in range(0, T, step):
            sim = unit[start : start + step] @ unit[start : start + step].transpose(1, 2)  # [t, M, M]
            sim = sim.masked_fill(~target[start : start + step, None, :], float("-inf"))
            assign[start : start + step] = sim.argmax(dim=-1)

        keep = (dominant | target).flatten().nonzero().squeeze(1)
        kept = tokens.features.reshape(T * M, -1)[keep].clone()  # dominant tokens keep their features exactly
        max_targets = int(c.max())
        if max_targets > 0:
            # Each target's sum over itself and its merged tokens, for all frames at once: one-hot weights
            # [T, targets, M] times features [T, M, D] (targets are few, so this beats scattering D-wide rows).
            slot = target.long().cumsum(1) - 1  # index of each target among its frame's targets
            owner = torch.where(target, slot, slot.gather(1, assign)).masked_fill(~(target | merged_away), max_targets)
            weights = torch.zeros(T, max_targets + 1, M, device=device)  # the last row collects everything else
            weights.scatter_(1, owner[:, None, :], 1.0)
            weights = weights[:, :max_targets]
            sums = (weights @ tokens.features.float())  # [T, targets, D]: target + its assigned tokens
            counts = weights.sum(-1, keepdim=True)
            real = torch.arange(max_targets, device=device)[None, :] < c  # [T, targets]: slots that hold a target
            rows = target.flatten()[keep]  # kept rows that are targets, frame-major in slot order like sums[real]
            own = kept[rows].float()
            if self.contextual_merge == "add":  # released: target + mean of the assigned tokens (target alone if none)
                merged = own + (sums[real] - own) / (counts[real] - 1).clamp(min=1)
            else:
                merged = sums[real] / counts[real]
            kept[rows] = merged.to(kept.dtype)
        return Selection(keep, T * M, features=kept, frame_budgets=budgets)


def _vision_stats(tokens: VideoTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """The side features VisionZip reads, or a ValueError that says how to get them."""
    side = tokens.side_features
    if "vision_attention" not in side or "vision_keys" not in side:
        raise ValueError(
            "VisionZipPress needs vision-encoder statistics: VideoTokens.side_features must hold 'vision_attention' "
            "[T, M] (attention each token receives in one vision-encoder layer) and 'vision_keys' [T, M, d] (its "
            "head-averaged keys). vidpress records them while the model encodes the video: apply the press to the "
            "model (`with press(model): model(**inputs)` or `model.generate(**inputs)`, with the pixel values, not "
            "pre-computed features), or attach them yourself to call select() on bare VideoTokens"
        )
    attention, keys = side["vision_attention"], side["vision_keys"]
    shape = (tokens.num_frames, tokens.tokens_per_frame)
    if attention.shape != shape or keys.dim() != 3 or keys.shape[:2] != shape:
        raise ValueError(
            f"vision_attention must be [T, M]={list(shape)} and vision_keys [T, M, d]; got {tuple(attention.shape)} "
            f"and {tuple(keys.shape)}"
        )
    return attention.to(tokens.features.device), keys.to(tokens.features.device)
