"""FlashVID (arXiv 2602.08024, ICLR 2026): attention- and diversity-based token selection (ADTS) plus tree-based
spatiotemporal merging, then a FastV-style stage inside the LLM, as the authors' release runs it.

The video is cut into segments where the mean frame feature changes (DySeg); in every frame a calibrated max-min
diversity rule picks ADTS tokens, weighted by the attention each patch receives in the vision encoder; the other
tokens of a segment merge along trees of similar tokens in consecutive frames, and what remains is clustered by
DPC-kNN per frame. The vision side keeps about `expansion` * R of the tokens; a FastV stage inside the LLM then keeps
a share of them so that the tokens the LLM layers process average R (the release's budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidpress.presses.base import LayerPress, check_compute_dtype, in_compute_dtype, register
from vidpress.presses.dpc_knn import dpc_knn
from vidpress.types import Query, Selection, VideoTokens

#: Released defaults per family: ADTS variant, min_segments, and the inner stage (layer K of a model with `depth`
#: layers, kept share r): LLaVA-OneVision / LLaVA-Video (Qwen2-7B, 28 layers), Qwen2.5-VL-7B (28), Qwen3-VL-8B (36).
RELEASED = {
    "llava": dict(adts="v2", min_segments=8, layer=20, depth=28, keep=0.3),
    "qwen": dict(adts="v1", min_segments=4, layer=20, depth=28, keep=0.3),
    "qwen3": dict(adts="v1", min_segments=4, layer=28, depth=36, keep=0.1),
}


@register("flashvid")
@dataclass
class FlashVIDPress(LayerPress):
    """FlashVID: vision-side ADTS + tree merging + DPC-kNN, then a FastV stage at layer K of the LLM.

    Rule per video X [T, M, D] with vision attention a [T, M] ("vision_received": attention each token receives in
    the vision encoder's last used block, mean over heads and all queries, pooled / merged like the features):
      F1 Segments: g_t = mean_m X[t, m]; s_t = cos(g_t, g_{t+1}); cut after frame t where s_t < `segment_threshold`.
         With fewer than `min_segments` segments the cut transitions' s_t are set to 1 and the
         min(min_segments - cuts - 1, T - 1) smallest s_t become cuts too (ties to the earlier transition; a
         transition picked twice gives an empty segment, which is skipped as in the release).
      F2 Per frame b = ceil(M * R * e) (e = `expansion`), a = ceil(b * `adts_ratio`) ADTS tokens, s = b - a merged
         tokens. With b >= M every token is kept (the release crashes there).
      F3 ADTS per frame, float32: C[i, j] = (1 - cos(x_i, x_j)) * w_j (v1) or * w_j * e_j (v2), w = a_t * 1e6,
         e_j = <x_j, mean of the segment's frame means>. First pick: argmax_j of the second smallest entry of column
         j; then a - 1 times: score_j = min over picked p of C[p, j] (v1: picked tokens score -1), argmax (first).
         v2 can pick a token twice (released); vidpress keeps it once, so such a frame keeps one token fewer.
      F4 Tree merging per segment of L >= 2 frames (skipped when s = 0 or `merge_threshold` >= 1): sigma[t, n] = max
         cosine of token n of frame t to the non-ADTS tokens of frame t - 1 (ADTS tokens of frame t: -1; frame 0: -1),
         parent = argmax. merge = sigma > tau; if fewer than B = b * L tokens stay, merge = sigma > theta with theta
         the (L * M - B)-th largest sigma (at least -1 + 1e-6). From the last frame back, a merged token adds its
         current sum to its parent and 1 to the parent's count; a remaining token is its sum / count. Released: a
         root = (sum of its whole tree) / (1 + its direct children) (a chain of three identical v gives 1.5 v);
         `tree_mean=True` divides by the tree size (the paper's "aggregated into a single token").
      F5 Single-frame segments (L = 1): the DPC-kNN pool is the frame's M - a non-ADTS tokens (vidpress fix,
         `single_frame_pool="non_adts"`). The release pools all M tokens, so an ADTS token can also become a cluster
         centre (a duplicate index); `single_frame_pool="all"` reproduces the pool, and a cluster centred on an ADTS
         token is dropped (a Selection holds each index once), the ADTS token keeping its own feature.
      F6 Per segment, rho = s * L / (pool tokens); per frame c_t = ceil(n_t * rho); if rho < 1 the frame's pool is
         clustered by DPC-kNN (`vidpress.presses.dpc_knn`, k = min(c_t, `knn`)) into c_t tokens, each the mean of
         its members at its centre's index; else the pool is kept as it is. With s = 0 (b <= 3) the frames keep
         their ADTS tokens only (vidpress rule: the released condition would keep the whole pool there).
      F7 Kept: ADTS tokens (own features) and the F6 tokens, in index order. About b tokens per frame: the vision
         side keeps about e * R (`Selection.retention`; `PressReport.retention_before_llm` on the model).
      F8 Inside the LLM (prefill): at the input of layer K, the last prompt token's head-averaged attention in layer
         K - 1 ranks the L_v frame tokens the LLM received; ceil(L_v * r) stay, keeping their position ids.
         Released: K = 20, r = 0.3 on 28 layers (Qwen3-VL: K = 28, r = 0.1 on 36), both making the layer average
         (K * e + (Lyr - K) * e * r) / Lyr = 1 times R. On a model of Lyr layers vidpress takes K = floor(K_rel * Lyr
         / Lyr_rel) and solves r from that balance, r = (Lyr / min(e, 1 / R) - K) / (Lyr - K) (rounded to 12
         digits), which gives the released pairs on the released depths (the shipped 4-layer reference model:
         K = 2, r = 0.6). `llm_layer` / `llm_keep` set K / r directly; `llm_stage=False` skips the stage (the vision
         side alone, about e * R; use expansion=1 for R).
    `retention` (R) is the layer-averaged share, the release's budget: `PressReport.retention` on the model.

    Per-family released defaults (`adts`, `min_segments`, K/r), chosen on entry from the model (Qwen2-VL/2.5-VL,
    Qwen3-VL, LLaVA); without a model (select() on bare VideoTokens) the LLaVA-OneVision values. Departures from
    the release besides F3's duplicates, F5 and the s = 0 case: float32 similarities by default (`compute_dtype`);
    the density noise comes from a generator seeded with `seed` per video (the release: the global RNG); ties in the
    segment cuts go to the earlier transition; batches of any size (the release: 1); kept tokens keep their original
    position ids (LLaVA too) and Qwen3-VL keeps its <|vision_start|>/<|vision_end|> tokens (the release removes
    them); DeepStack features are gathered at the kept indices (as released).

    Args:
        retention: R, frame tokens the LLM layers process on average, as a share of T * M.
        expansion: e, the vision side keeps about e * R (1.25 released).
        adts_ratio: alpha, share of a frame's budget b chosen by ADTS (0.7).
        merge_threshold: tau_t of the tree merging (0.8).
        segment_threshold: cut where adjacent frame means have cosine below this (0.9).
        min_segments: at least this many segments; None: per family (8 LLaVA, 4 Qwen).
        adts: "v1" (attention calibration) or "v2" (times event relevance); None: per family (v2 LLaVA, v1 Qwen).
        tree_mean: False (released: divide by 1 + direct children) or True (divide by the tree size).
        single_frame_pool: "non_adts" (vidpress fix) or "all" (released pool for one-frame segments).
        knn: neighbours of the DPC-kNN density (7).
        llm_stage: run the FastV stage inside the LLM (released).
        llm_layer: K; None: the released layer scaled to the model's depth.
        llm_keep: r, share kept at layer K; None: solved so the layer average is R.
        seed: seed of the DPC-kNN density noise.
        compute_dtype: "float32" (default) or "model": segment, tree and ranking similarities and merges in the
            model's dtype, as released (ADTS and DPC distances are float32 in both, as released).
    """

    supports_frame_budgets = False
    no_frame_budgets_because = ("its vision side sets each frame's budget itself (ADTS and merged tokens per segment, "
                                "ceil(M * R * e) per frame)")

    expansion: float = 1.25
    adts_ratio: float = 0.7
    merge_threshold: float = 0.8
    segment_threshold: float = 0.9
    min_segments: int | None = None
    adts: str | None = None
    tree_mean: bool = False
    single_frame_pool: str = "non_adts"
    knn: int = 7
    llm_stage: bool = True
    llm_layer: int | None = None
    llm_keep: float | None = None
    seed: int = 0
    compute_dtype: str = "float32"

    needs_vision_stats = True
    prunes_before_llm = True

    def __post_init__(self):
        super().__post_init__()
        for name, low, high in (("expansion", 1e-9, math.inf), ("adts_ratio", 0.0, 1.0),
                                ("merge_threshold", -1.0, 1.0), ("segment_threshold", -1.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}]; got {value!r}")
            setattr(self, name, float(value))
        for name in ("min_segments", "knn", "llm_layer"):
            value = getattr(self, name)
            if value is None and name != "knn":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1" + ("" if name == "knn" else " or None")
                                 + f"; got {value!r}")
        if self.adts not in (None, "v1", "v2"):
            raise ValueError(f"adts must be 'v1', 'v2' or None (the family's released variant); got {self.adts!r}")
        if self.single_frame_pool not in ("non_adts", "all"):
            raise ValueError("single_frame_pool must be 'non_adts' (vidpress fix) or 'all' (released); "
                             f"got {self.single_frame_pool!r}")
        for name in ("tree_mean", "llm_stage"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.llm_keep is not None and (isinstance(self.llm_keep, bool) or not isinstance(self.llm_keep, (int, float))
                                          or not 0.0 < self.llm_keep <= 1.0):
            raise ValueError(f"llm_keep must be None or a share in (0, 1]; got {self.llm_keep!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)
        self._family = "llava"

    def post_init_from_model(self, model) -> None:
        """Take the family's released defaults: Qwen3-VL (DeepStack), Qwen2/2.5-VL (M-RoPE) or LLaVA."""
        from vidpress.models import get_adapter

        adapter = get_adapter(model)
        self._family = "qwen3" if adapter.deepstack else "qwen" if adapter.mrope else "llava"

    def released(self, key: str):
        """The released default `key` of the family this press was last entered on (LLaVA before any)."""
        return RELEASED[self._family][key]

    # -- the in-LLM stage -------------------------------------------------------------------------------------
    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        """[(K, r)], or [(K, 1.0)] without the stage (the layers then process every token the vision side kept)."""
        depth, layer = self.released("depth"), self.released("layer")
        K = self.llm_layer if self.llm_layer is not None else max(1, layer * num_layers // depth)
        if K >= num_layers:
            raise ValueError(f"FlashVID's LLM stage at layer {K} does not fit a model of {num_layers} LLM layers; "
                             "pass llm_layer below that, or llm_stage=False (the vision side alone)")
        if not self.llm_stage:
            return [(K, 1.0)]
        if self.llm_keep is not None:
            return [(K, float(self.llm_keep))]
        vision = min(1.0, self.expansion * self.retention)
        keep = (self.retention * num_layers / vision - K) / (num_layers - K)
        return [(K, round(min(1.0, max(0.0, keep)), 12))]

    def stage_budget(self, fraction: float, frame_tokens: torch.Tensor) -> torch.Tensor:
        """ceil(r * L_v) per sample (released), at least 1. [B] -> [B]."""
        return (fraction * frame_tokens.double()).ceil().long().clamp(min=1)

    def min_retention(self, num_frames: int, num_layers: int | None = None) -> float:
        """Any retention is reached up to the per-frame rounding: the vision side acts before the first layer."""
        return 0.0

    # -- the vision side --------------------------------------------------------------------------------------
    def frame_budget(self, tokens_per_frame: int) -> tuple[int, int, int]:
        """(b, a, s) per frame: b = ceil(M * R * e), a = ceil(b * alpha) ADTS tokens, s = b - a merged tokens."""
        b = math.ceil(tokens_per_frame * self.retention * self.expansion)
        a = math.ceil(b * self.adts_ratio)
        return b, a, b - a

    def segments(self, tokens: VideoTokens) -> list[tuple[int, int]]:
        """F1: non-empty segments as (first frame, end frame) pairs covering the T frames in order."""
        return self._segments(in_compute_dtype(tokens.features, self.compute_dtype))

    def _segments(self, x: torch.Tensor) -> list[tuple[int, int]]:
        T = x.shape[0]
        if T == 1:
            return [(0, 1)]
        means = x.mean(dim=1)  # [T, D]
        sim = F.cosine_similarity(means[:-1], means[1:], dim=-1)  # [T - 1]
        cuts = (sim < self.segment_threshold).nonzero().squeeze(1).tolist()
        min_segments = self.min_segments if self.min_segments is not None else self.released("min_segments")
        if len(cuts) + 1 < min_segments:
            rest = sim.float().clone()
            rest[cuts] = 1.0
            count = min(min_segments - len(cuts) - 1, T - 1)
            cuts = sorted(cuts + torch.sort(rest, stable=True).indices[:count].tolist())
        bounds = [0] + [c + 1 for c in cuts] + [T]
        return [(start, end) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]

    def adts_select(self, x: torch.Tensor, attention: torch.Tensor, count: int, variant: str) -> torch.Tensor:
        """F3 on one segment's frames x [L, M, D] with attention [L, M] -> bool [L, M] of the picked tokens."""
        L, M, _ = x.shape
        x = x.float()
        unit = F.normalize(x, dim=-1)
        weights = attention.float() * 1e6
        if variant == "v2":
            relevance = x @ x.mean(dim=1).mean(dim=0)  # [L, M]: mean over the segment's frame means of <x_j, g_c>
            weights = weights * relevance
        calibrated = (1 - unit @ unit.transpose(1, 2)) * weights[:, None, :]  # [L, M (i), M (j)]
        rows = torch.arange(L, device=x.device)
        first = torch.kthvalue(calibrated, 2, dim=1).values.argmax(dim=1)  # [L]
        picked = torch.zeros(L, M, dtype=torch.bool, device=x.device)
        picked[rows, first] = True
        score = calibrated[rows, first]  # [L, M]: min over the picked rows
        for _ in range(count - 1):
            ranked = score.masked_fill(picked, -1.0) if variant == "v1" else score
            pick = ranked.argmax(dim=1)
            picked[rows, pick] = True
            score = torch.minimum(score, calibrated[rows, pick])
        return picked

    def tree_merge(self, x: torch.Tensor, adts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """F4 on one segment x [L, M, D] (compute dtype) with ADTS tokens adts [L, M] and B = `total`: (remaining
        non-ADTS tokens, bool [L, M]; every token's merged feature [L, M, D])."""
        L, M, _ = x.shape
        unit = F.normalize(x, dim=-1)
        sim = unit[1:] @ unit[:-1].transpose(1, 2)  # [L - 1, M (frame t), M (frame t - 1)]
        sim = sim.masked_fill(adts[1:, :, None], -1.0).masked_fill(adts[:-1, None, :], -1.0)
        parent = sim.argmax(dim=2)  # [L - 1, M], first maximum
        sigma = torch.cat([torch.full((1, M), -1.0, dtype=sim.dtype, device=x.device),
                           sim.gather(2, parent[..., None])[..., 0]])  # [L, M]
        merged = sigma > self.merge_threshold
        if int((~merged).sum()) < total:
            theta = torch.topk(sigma.flatten().float(), L * M - total).values[-1]
            merged = sigma.float() > max(float(theta), -1 + 1e-6)
        sums, counts = x.clone(), torch.ones(L, M, dtype=x.dtype, device=x.device)
        for t in range(L - 1, 0, -1):  # a merged token hands its current sum (its subtree) to its parent
            into = parent[t - 1][merged[t]]
            sums[t - 1].index_add_(0, into, sums[t][merged[t]])
            added = counts[t][merged[t]] if self.tree_mean else torch.ones_like(into, dtype=x.dtype)
            counts[t - 1].index_add_(0, into, added)
        return ~merged & ~adts, sums / counts[..., None]

    def compress(self, tokens: VideoTokens, query: Query | None) -> Selection:
        T, M, D = tokens.features.shape
        b, a, s = self.frame_budget(M)
        if b >= M:  # every token fits the budget (the release crashes here)
            return Selection(torch.arange(T * M, device=tokens.features.device), T * M,
                             frame_budgets=torch.full((T,), M, dtype=torch.long))
        attention = vision_received(tokens, type(self).__name__)
        x = in_compute_dtype(tokens.features, self.compute_dtype)
        variant = self.adts or self.released("adts")
        generator = torch.Generator().manual_seed(self.seed)
        keep_parts, feature_parts = [], []
        for start, end in self._segments(x):
            L = end - start
            adts = self.adts_select(tokens.features[start:end], attention[start:end], a, variant)
            if L >= 2 and s > 0 and self.merge_threshold < 1:
                pool, pooled = self.tree_merge(x[start:end], adts, b * L)
            else:
                pool, pooled = ~adts, x[start:end]
                if L == 1 and self.single_frame_pool == "all":
                    pool = torch.ones_like(adts)
            index = torch.arange(start * M, end * M, device=x.device).view(L, M)
            keep_parts.append(index[adts])
            feature_parts.append(tokens.features[start:end][adts].float())
            if s == 0:
                continue
            rho = s * L / int(pool.sum())
            for t in range(L):
                members = pool[t].nonzero().squeeze(1)
                clusters = math.ceil(members.numel() * rho)
                if clusters > 0 and rho < 1:
                    centres, assign = dpc_knn(pooled[t][members], clusters, self.knn, generator)
                    sums = torch.zeros(clusters, D, dtype=pooled.dtype, device=x.device)
                    sums.index_add_(0, assign, pooled[t][members])
                    counts = torch.bincount(assign, minlength=clusters).to(pooled.dtype)
                    kept, features = members[centres], sums / counts[:, None]
                else:
                    kept, features = members, pooled[t][members]
                fresh = ~adts[t][kept]  # F5 "all": a centre on an ADTS token is dropped (ADTS keeps its feature)
                keep_parts.append(index[t][kept[fresh]])
                feature_parts.append(features[fresh].float())
        keep = torch.cat(keep_parts)
        order = torch.argsort(keep)
        keep = keep[order]
        features = torch.cat(feature_parts)[order].to(tokens.features.dtype)
        return Selection(keep, T * M, features=features, frame_budgets=torch.bincount(keep.cpu() // M, minlength=T))


def vision_received(tokens: VideoTokens, press: str) -> torch.Tensor:
    """The "vision_received" side feature [T, M], or a ValueError that says how to get it."""
    attention = tokens.side_features.get("vision_received")
    if attention is None:
        raise ValueError(
            f"{press} needs the attention each token receives in the vision encoder: VideoTokens.side_features must "
            "hold 'vision_received' [T, M]. vidpress records it while the model encodes the video: apply the press to "
            "the model (`with press(model): model(**inputs)` or `model.generate(**inputs)`, with the pixel values), "
            "or attach it yourself to call select() on bare VideoTokens"
        )
    if attention.shape != (tokens.num_frames, tokens.tokens_per_frame):
        raise ValueError(f"vision_received must be [T, M]={[tokens.num_frames, tokens.tokens_per_frame]}; got "
                         f"{tuple(attention.shape)}")
    return attention.to(tokens.features.device)
