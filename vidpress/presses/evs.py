"""EVS — Efficient Video Sampling (Bagrov et al., "Efficient Video Sampling: Pruning Temporally Redundant Tokens for
Faster VLM Inference", NVIDIA, arXiv 2510.14624), as vLLM 0.32.0 runs it (`--video-pruning-rate`,
vllm/multimodal/evs.py).

Tokens that barely changed since the same position in the previous frame are dropped; the first frame is always
kept whole. Training-free, query-agnostic, selection only (kept tokens keep their features and positions); acts on
the projector/merger output, before the LLM; needs no attention weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import ScorePress, check_compute_dtype, in_compute_dtype, keep_top, register
from vidpress.types import Query, Selection, VideoTokens

#: The score vLLM gives every token of the first frame, so that the first frame is always kept whole.
FIRST_FRAME_SCORE = 255.0


@register("evs")
@dataclass
class EVSPress(ScorePress):
    """EVS token selection, the rule vLLM 0.32.0 runs (its `compute_retention_mask`), kept set for kept set.

    Rule, on features x [T, M, D] (the merger output; on Qwen3-VL with `deepstack=True` each token's main features
    concatenated with its DeepStack features, as vLLM scores them):
      1. dis[t, m] = 1 - cos(x[t, m], x[t - 1, m]) for t >= 1 (`torch.nn.functional.cosine_similarity`, eps 1e-8);
         dis[0, m] = 255, so the first frame always ranks first.
      2. Count: K = max(M, int(T * M * (1 - q))) with the pruning rate q = 1 - R (vLLM's `--video-pruning-rate`,
         Python floats, so R = 0.1 keeps what vLLM keeps at q = 0.9). The count depends only on (T, M, R): vLLM
         sizes the prompt before the encoder runs.
      3. Keep the first K tokens of a stable descending sort of dis over the flattened (t, h, w) order (ties go to
         the lower index). Frames may keep no token at all (a static stretch of video).
    Effective retention: max(M, int(T * M * R)) / (T * M), at least one whole frame (1 / T).

    Differences from the paper: the paper selects in RGB pixel space (per-patch L1 change, a percentile threshold);
    vLLM, and this press, score the merged embeddings by cosine and keep an exact count. The pixel variant is not
    implemented (the press sees only the merged tokens).

    Args:
        retention: R = 1 - q, fraction of video tokens kept (at least the first frame's M tokens).
        deepstack: score each token's main features concatenated with its DeepStack side features
            ("deepstack.0", ...) when the video carries them (Qwen3-VL), as vLLM does (True, default); False scores
            the main features alone. Other families have no DeepStack features: no effect.
        compute_dtype: "float32" (default) or "model": the dissimilarities in the features' own dtype (bf16 in a
            bf16 vLLM deployment; see `vidpress.presses.base.check_compute_dtype`).
    """

    supports_frame_budgets = False
    no_frame_budgets_because = ("its count and kept set are vLLM's EVS rule over the whole video (max(M, int(N(1-q))) "
                                "tokens, the first frame whole), so that offline results equal a vLLM deployment's")

    deepstack: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.deepstack, bool):
            raise ValueError(f"deepstack must be True or False; got {self.deepstack!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """The first frame is always kept whole: 1 / num_frames."""
        return 1 / num_frames

    def retained_count(self, num_frames: int, tokens_per_frame: int) -> int:
        """K = max(M, int(T * M * (1 - q))), q = 1 - R: vLLM's `compute_retained_tokens_count`."""
        rate = 1.0 - self.retention
        return max(tokens_per_frame, int(num_frames * tokens_per_frame * (1 - rate)))

    def scored_features(self, tokens: VideoTokens) -> torch.Tensor:
        """The features the dissimilarity is computed on, [T, M, D'] in the compute dtype."""
        x = tokens.features
        levels = sorted((int(key.split(".", 1)[1]), side) for key, side in tokens.side_features.items()
                        if key.startswith("deepstack.") and key.split(".", 1)[1].isdigit())
        if self.deepstack and levels:
            x = torch.cat([x, *(side.to(x.dtype) for _, side in levels)], dim=-1)
        return in_compute_dtype(x, self.compute_dtype)

    def rank(self, tokens: VideoTokens, query: Query | None) -> tuple[torch.Tensor, None]:
        """dis [T, M] (higher = changed more = kept first); frame 0 scores 255."""
        x = self.scored_features(tokens)
        first = torch.full_like(x[:1, :, 0], FIRST_FRAME_SCORE)
        dis = 1 - torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=-1)
        return torch.cat([first, dis], dim=0), None

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M = tokens.num_frames, tokens.tokens_per_frame
        scores, _ = self.rank(tokens, query)
        keep = keep_top(scores, self.retained_count(T, M))
        return Selection(keep, tokens.num_tokens, frame_budgets=torch.bincount(keep.cpu() // M, minlength=T))
