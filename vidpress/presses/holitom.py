"""HoliTom (arXiv 2505.21334, NeurIPS 2025): holistic token merging, the outer-LLM part as the authors release it.

The frames are split into windows by dynamic programming so that as many tokens as possible stay the same (cosine
above tau) at their position through a window; such static tokens become one window-mean token each, clustered by
DPC-kNN; every frame keeps its dynamic tokens that receive the most vision-encoder attention. The budget of what is
left is scaled so the video keeps about R of its tokens. Acts on the projector output, before the LLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidpress.presses.base import Press, check_compute_dtype, in_compute_dtype, register
from vidpress.presses.dpc_knn import dpc_knn
from vidpress.presses.flashvid import vision_received
from vidpress.types import Query, Selection, VideoTokens


@register("holitom")
@dataclass
class HoliTomPress(Press):
    """HoliTom without its inner-LLM merge (the release's "HoliTom (w/o M)").

    Rule per video X [T, M, D] with vision attention a [T, M] ("vision_received": attention each token receives in
    the vision encoder's last used block, mean over heads and all queries, pooled / merged like the features):
      H1 sim[t, m] = cos(X[t, m], X[t + 1, m]), t = 0 .. T-2.
      H2 Windows by dynamic programming: token m is static in window [s, e] when sim[t, m] > tau for every t in
         [s, e - 1]; gain(s, e) = (e - s) * #static. dp[i] = max(dp[i - 1] (frame i alone), dp[i - w] + gain(i - w + 1,
         i) for w = 2 .. min(i + 1, `max_window`)), replaced only when strictly larger (ties keep the single frame,
         then the shorter window); backtracked from T - 1. removed = dp[T - 1].
      H3 R' = min(R * N / (N - removed), 1), N = T * M.
      H4 A window [s, e], e > s: each static token m becomes the mean of X[s..e, m] at frame s's position; the others
         are dynamic in each frame. A single-frame window: all M tokens are dynamic.
      H5 Dynamic tokens: each frame keeps its ceil(n_dyn * R') with the highest attention (ties to the lower index).
      H6 Static tokens of a window: c = round(n_S * R') DPC-kNN clusters (`vidpress.presses.dpc_knn`, k = min(c,
         `knn`), centres in index order); a centre with members becomes `cluster_weight` * centre + (1 -
         `cluster_weight`) * mean(members) (released 0.6 / 0.4), else stays itself; at the centre's position. c = 0
         drops the window's static tokens (released).
    About R * N tokens are kept (a little more from the ceilings, fewer when the static windows alone leave less than
    R * N). `threshold` None is the released choice: 0.65 at R <= 0.10 (the OV-7B script at 10 %), else 0.8.

    Families: released for LLaVA-OneVision / LLaVA-Video only. vidpress runs the same rule on every family: on
    Qwen2-VL / 2.5-VL / 3-VL X is the merger output (a "frame" is a temporal patch of two frames) and a is the
    attention each patch receives in the last vision block, averaged over each 2 x 2 merge group (Qwen2.5-VL's window
    order undone); kept tokens keep their M-RoPE (t, h, w) positions, a static token frame s's; Qwen3-VL's
    DeepStack features are gathered at the kept indices. (The VidCom2 authors' `qwen` port ranks dynamic tokens by
    their L2 norm instead and has no inner merge.)

    Departures from the release: the inner-LLM merge (H8: at layer 18, the pruned half folded into their most similar
    kept tokens) is not implemented; tokens are emitted in index order (the released LLaVA-Video "grid" order without
    newlines; for LLaVA-OneVision the release puts a window's static tokens before frame s's dynamic tokens) and keep
    their original position ids (the release renumbers them); the DPC-kNN density noise comes from a generator
    seeded with `seed` per video (the release: the global RNG); similarities in float32 by default
    (`compute_dtype`); batches of any size (the release: 1); if nothing at all would be kept, the token of frame 0
    with the highest attention is.

    Args:
        retention: R, fraction of video tokens kept (about).
        threshold: tau, the static cosine threshold; None: 0.65 at R <= 0.10, else 0.8.
        cluster_weight: Beta, the centre's weight in a merged static cluster (0.6).
        knn: neighbours of the DPC-kNN density (7).
        max_window: longest window in frames (1024 released: unlimited in practice).
        seed: seed of the DPC-kNN density noise.
        compute_dtype: "float32" (default) or "model": similarities and means in the features' dtype, as released
            (DPC distances are float32 in both).
    """

    threshold: float | None = None
    cluster_weight: float = 0.6
    knn: int = 7
    max_window: int = 1024
    seed: int = 0
    compute_dtype: str = "float32"

    needs_vision_stats = True

    def __post_init__(self):
        super().__post_init__()
        if self.threshold is not None:
            if (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                    or not -1.0 <= self.threshold <= 1.0):
                raise ValueError(f"threshold must be None or a cosine in [-1, 1]; got {self.threshold!r}")
            self.threshold = float(self.threshold)
        weight = self.cluster_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"cluster_weight must be a number in [0, 1]; got {weight!r}")
        for name in ("knn", "max_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    @property
    def tau(self) -> float:
        """The static threshold in use (see `threshold`)."""
        if self.threshold is not None:
            return self.threshold
        return 0.65 if self.retention <= 0.10 + 1e-12 else 0.8

    def similarity(self, tokens: VideoTokens) -> torch.Tensor:
        """H1: cosine of every token to the same position in the next frame, [T - 1, M]."""
        unit = F.normalize(in_compute_dtype(tokens.features, self.compute_dtype), dim=-1)
        return (unit[:-1] * unit[1:]).sum(-1)

    def windows(self, static: torch.Tensor) -> tuple[list[tuple[int, int]], int]:
        """H2 on static [T - 1, M] (sim > tau): windows as (first, last) frames (inclusive) in order, and removed."""
        T = static.shape[0] + 1
        best, length = [0] * T, [1] * T
        for i in range(T):
            best[i] = best[i - 1] if i else 0
            still = torch.ones(static.shape[1], dtype=torch.bool, device=static.device)
            for w in range(2, min(i + 1, self.max_window) + 1):
                j = i - w  # window [j + 1, i]: transitions j + 1 .. i - 1
                still &= static[j + 1]
                value = (best[j] if j >= 0 else 0) + (w - 1) * int(still.sum())
                if value > best[i]:
                    best[i], length[i] = value, w
        windows, i = [], T - 1
        while i >= 0:
            windows.append((i - length[i] + 1, i))
            i -= length[i]
        return windows[::-1], best[T - 1]

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M, D = tokens.features.shape
        N = T * M
        device = tokens.features.device
        attention = vision_received(tokens, type(self).__name__).float()
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        static = self.similarity(tokens) > self.tau  # [T - 1, M]
        windows, removed = self.windows(static)
        share = min(self.retention * N / (N - removed), 1.0)
        generator = torch.Generator().manual_seed(self.seed)
        index = torch.arange(N, device=device).view(T, M)
        keep_parts, feature_parts = [], []
        for first, last in windows:
            still = static[first:last].all(dim=0) if last > first else torch.zeros(M, dtype=torch.bool, device=device)
            dynamic = (~still).nonzero().squeeze(1)
            count = math.ceil(dynamic.numel() * share)
            if count:
                for t in range(first, last + 1):
                    order = torch.sort(attention[t, dynamic], descending=True, stable=True).indices[:count]
                    kept = dynamic[order].sort().values
                    keep_parts.append(index[t, kept])
                    feature_parts.append(tokens.features[t, kept].float())
            positions = still.nonzero().squeeze(1)
            clusters = round(positions.numel() * share)
            if clusters:
                means = x[first : last + 1, positions].mean(dim=0)  # [n_S, D]
                centres, assign = dpc_knn(means, clusters, self.knn, generator, sort_centres=True)
                members = torch.ones(positions.numel(), dtype=torch.bool, device=device)
                members[centres] = False
                sums = torch.zeros(clusters, D, dtype=means.dtype, device=device).index_add_(
                    0, assign[members], means[members])
                counts = torch.bincount(assign[members], minlength=clusters)
                merged = torch.where((counts > 0)[:, None], self.cluster_weight * means[centres]
                                     + (1 - self.cluster_weight) * sums / counts.clamp(min=1)[:, None].to(sums.dtype),
                                     means[centres])
                keep_parts.append(index[first, positions[centres]])
                feature_parts.append(merged.float())
        if not keep_parts:  # every window's static clusters rounded to 0 and no dynamic token: keep one token
            best = int(attention[0].argmax())
            keep_parts, feature_parts = [index[0, best : best + 1]], [tokens.features[0, best : best + 1].float()]
        keep = torch.cat(keep_parts)
        order = torch.argsort(keep)
        keep = keep[order]
        features = torch.cat(feature_parts)[order].to(tokens.features.dtype)
        return Selection(keep, N, features=features, frame_budgets=torch.bincount(keep.cpu() // M, minlength=T))
