"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
arXiv 2410.04417, ICML 2025; release Gumpest/SparseVLMs, v1.5 algorithm).

Text-guided pruning inside the LLM: the prompt's text tokens most related to the video ("raters") score the frame
tokens with their own attention at a few pruning layers; after each pruning layer only the best frame tokens go on,
and a few of the pruned ones are recycled into merged tokens (density-peak clustering of their hidden states).
Acts inside the LLM; the raters' attention rows are computed next to the model's own attention (any implementation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vidpress.models.layer_pruning import LayerPruner
from vidpress.presses.base import LayerPress, check_compute_dtype, in_compute_dtype, register

#: The released v1.5 presets: name (layer-averaged tokens of 576) -> tokens kept after each of layers 2, 6, 15.
PRESETS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
#: The presets' image size (LLaVA-1.5, 576 tokens) and LLM depth (LLaMA-7B, 32 layers).
PRESET_TOKENS, PRESET_DEPTH = 576, 32
BUDGETS = ("layer_average", "preset")
VARIANTS = ("released", "paper")


def recycled_count(deleted: int) -> tuple[int, int]:
    """Released recycling sizes for `deleted` pruned tokens: (n_r = int(0.3 n_d) + 1 recycled, int(n_r / 10) + 1
    clusters)."""
    recycled = int(0.3 * deleted) + 1
    return recycled, int(recycled / 10) + 1


@register("sparsevlm")
@dataclass
class SparseVLMPress(LayerPress):
    """SparseVLM as released (v1.5 / main USE_VERSION=1_0), mapped to videos and to vidpress's retention.

    Rule (released):
      1. Raters, once per prompt from the LLM input embeddings E: S = E_v E_t^T [N, L_t] over the N frame tokens and
         the L_t text tokens after the last visual placeholder up to the end of the prompt; softmax over the text
         axis; r = mean over the frame tokens [L_t]; raters = {i : r_i > mean(r)} (the paper: >=). No text token
         above the mean (constant r): every text token rates (vidpress). No text after the video: the last prompt
         token rates (vidpress).
      2. At each pruning layer l: that layer's own attention probabilities (causal softmax of post-RoPE
         q k^T / sqrt(d), computed for the raters' rows only, over all keys, in float32), averaged over heads and
         over the raters -> one score per current frame token.
      3. Layer l's OUTPUT is pruned: the top-k frame tokens by score stay (ties -> lower position); of the n_d
         pruned ones the n_r = int(0.3 n_d) + 1 best-scored are recycled into c = int(n_r / 10) + 1 tokens by
         DPC-kNN on their layer-l outputs x [n_r, D]: d_ij = ||x_i - x_j|| / sqrt(D); density
         rho_i = exp(-mean of the c smallest d_ij^2, self included) + 1e-6 * U(0, 1) (seeded); delta_i = min d_ij
         over denser j (else max d); centres = top-c of rho * delta; every token joins its nearest centre (first on
         ties); merged token = mean of its members, emitted in centre order after the kept frame tokens (right
         after the visual span, before the text). Later stages treat merged tokens as frame tokens.
      4. Pruning layers (2, 6, 15) (0-based) on LLMs of >= 16 layers; shallower LLMs (or `layer_scale=True`) use
         round(l * layers / 32). A pruning layer l acts as a stage at layer l + 1 (the first layer that sees fewer
         tokens); stages are clamped to the adapter's first prunable layer (Qwen3-VL: after its DeepStack layers)
         and to the last layer, duplicates merged (the deeper stage's budget wins).
    Video mapping (vidpress's; the authors only released Video-LLaVA, one step after layer 1): the frames share one
    pool (global top-k over the whole video, no per-frame floor). The stage shape comes from the released preset
    whose name / 576 is nearest to R (ties -> the larger), w_s = list_s / 576:
      - budget="layer_average" (default): stage s processes round(min(1, f * w_s) * N) frame tokens per sample,
        merged tokens included (k = that minus the c merged tokens; no recycling when the budget has no room for
        them), with f solved so that the frame tokens processed, averaged over the LLM's layers, equal R (the
        measure FastV / PDrop / pre-LLM presses use). The layers up to the first pruning layer see every token, so
        R below (l_1 + 1) / layers is met at that floor (1 token per stage).
      - budget="preset": k_s = round(min(1, w_s * R / R_p) * N) kept plus the c merged tokens (R = 1/3 at N = 576
        gives the released (300, 200, 110)); the layer average then differs from R, and the report says by how
        much (`PressReport.retention`).
    A stage whose budget covers every current frame token does nothing (released: min(k, n_v - 1) always prunes and
    recycles at least one token, which at retention 1 would change the output).

    With frame_budgets="vidcom2" (SparseVLM+FCA, vidpress's composition; the VidCom² paper, arXiv 2505.14454, shows
    it but no release composes them): a stage keeping the share f of the video gives frame t the budget
    b[t] = min(M, max(1, round(f * M * r[t] / R))), r[t] VidCom²'s frame retention (`vidpress.presses.fca`, the code
    VidCom² runs); at f = R that is VidCom²'s own k[t]. Each frame is its own pool: the rule above runs on frame t's
    current tokens with the budget b[t] (the same split into kept and merged tokens, so kept + merged = b[t]; with
    budget="preset" b[t] kept plus the merged ones), ranked by the raters' scores unchanged, and recycles from its own
    pruned tokens (the int(0.3 n_d[t]) + 1 best of them into int(n_r[t] / 10) + 1 merged tokens). A merged token
    belongs to its centre's frame, so at later stages it counts in that frame's budget; merged tokens follow the kept
    frame tokens frame by frame (each frame's in centre order). A frame whose budget covers its tokens is left as is.

    Positions: every family keeps the original positions: kept tokens their own, a merged token its centre's; the
    released code renumbers (0..L'-1, decoding at each layer's cache length). Renumbering is meaningless under
    Qwen's M-RoPE (3-D time/height/width ids; as SparseVLM+ does), and one rule for all five families keeps decoding
    positions the same in every layer; on the 1-D RoPE LLaVA families this is a departure from the release.

    Reported: `PressReport.layer_tokens` (frame tokens each layer processes, merged tokens counted), its average
    `PressReport.retention`, and per video the surviving tokens (a merged token is listed at its centre's index).

    Args:
        retention: see budget.
        layers: the pruning layers (0-based, at depth 32 when scaled).
        layer_scale: None (default): scale `layers` only on LLMs shallower than 16 layers; True / False: always /
            never.
        budget: "layer_average" (default) or "preset" (see above).
        recycle: merge pruned tokens into new ones (released); False keeps the top-k only.
        variant: "released" (default) or "paper": raters r_i >= mean, recycled token = SUM of its cluster, cosine
            assignment to centres (the paper's text; its rank-based deletion count has no released lambda, so the
            counts stay as above).
        seed: seed of the density tie-break noise (released: the global RNG).
        compute_dtype: "float32" (default) or "model" (see `vidpress.presses.base.check_compute_dtype`).
        frame_budgets: None (default: one pool per video) or "vidcom2" (per-frame budgets, see above).
    """

    layers: tuple[int, ...] = (2, 6, 15)
    layer_scale: bool | None = None
    budget: str = "layer_average"
    recycle: bool = True
    variant: str = "released"
    seed: int = 0
    compute_dtype: str = "float32"

    query_aware: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, (list, tuple)):
            raise ValueError(f"layers must be a list of increasing layer indices >= 0 (0-based pruning layers); got "
                             f"{self.layers!r}")
        self.layers = tuple(self.layers)
        if not self.layers or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in self.layers) \
                or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be increasing layer indices >= 0 (0-based pruning layers); got "
                             f"{self.layers!r}")
        if self.layer_scale not in (None, True, False):
            raise ValueError(f"layer_scale must be None (scale on LLMs below 16 layers), True or False; got "
                             f"{self.layer_scale!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS} ('layer_average': R is the layer-averaged share of "
                             f"frame tokens; 'preset': the released preset lists scaled by R); got {self.budget!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        if not isinstance(self.recycle, bool):
            raise ValueError(f"recycle must be True or False; got {self.recycle!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    # -- the schedule --------------------------------------------------------------------------------------------
    def preset(self) -> int:
        """The released preset nearest to the retention (name / 576 vs R; ties -> the larger preset)."""
        return min(PRESETS, key=lambda name: (abs(name / PRESET_TOKENS - self.retention), -name))

    def stage_layers(self, num_layers: int, first_layer: int = 1) -> tuple[list[int], list[int]]:
        """(stage layers, index of the released pruning layer each comes from): pruning layer l -> stage l + 1."""
        if num_layers < 2:
            raise ValueError(f"SparseVLM needs an LLM with at least 2 layers; got {num_layers}")
        scale = num_layers < 16 if self.layer_scale is None else self.layer_scale
        stages: dict[int, int] = {}
        for s, layer in enumerate(self.layers):
            layer = round(layer * num_layers / PRESET_DEPTH) if scale else layer
            stages[min(num_layers - 1, max(first_layer, layer + 1))] = s  # the deeper pruning layer wins
        return sorted(stages), [stages[layer] for layer in sorted(stages)]

    def schedule(self, num_layers: int, first_layer: int = 1) -> list[tuple[int, float]]:
        """Stages [(layer, fraction of the sample's N frame tokens)], see the class docstring."""
        layers, source = self.stage_layers(num_layers, first_layer)
        name = self.preset()
        weights = [PRESETS[name][s] / PRESET_TOKENS for s in source]
        if self.budget == "preset":
            return [(layer, min(1.0, w * self.retention * PRESET_TOKENS / name)) for layer, w in zip(layers, weights)]
        spans = [b - a for a, b in zip(layers, layers[1:] + [num_layers])]

        def average(f: float) -> float:
            return (layers[0] + sum(span * min(1.0, f * w) for span, w in zip(spans, weights))) / num_layers

        low, high = 0.0, 1.0 / min(weights)  # average(high) = 1; average() increases with f
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if average(mid) < self.retention else (low, mid)
        f = (low + high) / 2
        return [(layer, round(min(1.0, f * w), 12)) for layer, w in zip(layers, weights)]

    def split_budget(self, budget: int, current: int) -> tuple[int, int]:
        """(frame tokens kept, merged tokens made) at a stage with `budget` for `current` frame tokens; (current, 0)
        when the budget covers them all."""
        if budget >= current:
            return current, 0
        if not self.recycle:
            return budget, 0
        if self.budget == "preset":
            return budget, recycled_count(current - budget)[1]
        # the largest k with k + c(current - k) <= budget; k + c(.) grows by 0 or 1 per k, so it meets the budget
        for kept in range(budget - 1, 0, -1):
            clusters = recycled_count(current - kept)[1]
            if kept + clusters <= budget:
                return kept, clusters
        return budget, 0  # no room for merged tokens next to one kept token

    def pruner(self, adapter):
        return SparseVLMPruner(self, adapter)

    # -- the released math ----------------------------------------------------------------------------------------
    def raters(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Rater mask over the text tokens. visual [N, D], text [L_t, D] LLM input embeddings -> bool [L_t]."""
        visual, text = in_compute_dtype(visual, self.compute_dtype), in_compute_dtype(text, self.compute_dtype)
        relevance = torch.softmax(visual @ text.T, dim=1).mean(0)  # [L_t]
        raters = relevance >= relevance.mean() if self.variant == "paper" else relevance > relevance.mean()
        return raters if raters.any() else torch.ones_like(raters)

    def merge(self, hidden: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """DPC-kNN recycling. hidden [n_r, D] (best-scored first) -> (merged [c, D] in hidden's dtype, centres [c]:
        each merged token's centre, an index into hidden), in centre order."""
        x = in_compute_dtype(hidden, self.compute_dtype)
        n, D = x.shape
        clusters = min(clusters, n)
        dist = torch.cdist(x[None], x[None], compute_mode="donot_use_mm_for_euclid_dist")[0] / math.sqrt(D)
        nearest = (dist**2).topk(clusters, dim=1, largest=False).values  # self (0) included, as released
        noise = torch.rand(n, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        density = torch.exp(-nearest.mean(1)) + (noise * 1e-6).to(x.dtype).to(x.device)
        denser = density[None, :] > density[:, None]  # [i, j]: j is denser than i
        delta = dist.masked_fill(~denser, float("inf")).min(1).values
        delta = torch.where(denser.any(1), delta, dist.max())
        centres = torch.sort(density * delta, descending=True, stable=True).indices[:clusters]
        if self.variant == "paper":
            unit = F.normalize(x, dim=1)
            assign = (unit @ unit[centres].T).argmax(1)
        else:
            assign = dist[:, centres].argmin(1)  # the first centre on ties
        assign[centres] = torch.arange(clusters, device=x.device)
        merged = torch.zeros(clusters, D, dtype=x.dtype, device=x.device).index_add_(0, assign, x)
        if self.variant == "released":
            merged = merged / torch.bincount(assign, minlength=clusters).to(x.dtype)[:, None]
        return merged.to(hidden.dtype), centres


class SparseVLMPruner(LayerPruner):
    """The in-LLM machinery of `LayerPress`, with SparseVLM's raters, scores and recycling (see the press)."""

    def plan_stages(self, num_layers: int) -> list[tuple[int, float]]:
        return self.press.schedule(num_layers, first_layer=self.adapter.min_prune_layer)

    def begin(self, input_ids, attention_mask, report):
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        ids = [i for i in (self.adapter.video_token_id, self.adapter.image_token_id) if isinstance(i, int)]
        self.prompt_visual = torch.isin(input_ids, torch.tensor(ids, device=input_ids.device)) & valid
        self.recycled: dict[int, list[torch.Tensor]] = {}
        super().begin(input_ids, attention_mask, report)

    def _start(self, rows: int, length: int):
        super()._start(rows, length)
        visual = self.prompt_visual.repeat_interleave(self.copies, dim=0)
        self.placeholder_full = F.pad(visual, (0, length - visual.shape[1]), value=False)  # [rows, length]
        self.raters_full = None
        self.recycled = {}

    def _reset_hook(self, module, args, kwargs):
        super()._reset_hook(module, args, kwargs)
        cache = kwargs.get("past_key_values")
        if self.report is not None and (cache is None or cache.get_seq_length(0) == 0):
            self._find_raters(args[0] if args else kwargs["hidden_states"])

    def _find_raters(self, embeddings: torch.Tensor) -> None:
        """Each prompt's raters from the LLM input embeddings [rows, length, D] -> self.raters_full [rows, length]."""
        rows, length = self.owner.shape
        positions = torch.arange(length, device=embeddings.device)
        raters = torch.zeros(rows, length, dtype=torch.bool, device=embeddings.device)
        for row in range(0, rows, self.copies):  # copies of a prompt (beams, return sequences) share its raters
            frame = self.owner[row] >= 0
            if not frame.any():
                continue
            last_visual = int(positions[self.placeholder_full[row]].max())
            end = int(self.query_full[row])
            text = (positions > last_visual) & (positions <= end) & self.full_valid[row]
            if text.any():
                chosen = self.press.raters(embeddings[row, frame], embeddings[row, text])
                raters[row, positions[text][chosen]] = True
            else:
                raters[row, end] = True
            raters[row : row + self.copies] = raters[row]
        self.raters_full = raters

    def record(self, query: torch.Tensor, key: torch.Tensor, scaling: float):
        """Head- and rater-averaged attention of the raters over the current keys -> self.scores [rows, kv].
        query [rows, H, L, d] and key [rows, H_kv, L, d] after RoPE, as the layer's attention sees them."""
        if self.raters_full is None:  # several new tokens on top of a cache: no prefill, nothing is ranked
            return
        rows, H, length, d = query.shape
        groups = H // key.shape[1]
        raters = self.raters_full.gather(1, self.index) & self.valid  # [rows, L]
        count = raters.sum(1)
        width = max(1, int(count.max()))
        place = torch.sort(raters.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
        used = torch.arange(width, device=query.device)[None] < count[:, None]  # [rows, width]
        q = query.gather(2, place[:, None, :, None].expand(rows, H, width, d))
        q = q.view(rows, key.shape[1], groups, width, d)
        if self.compute_dtype == "float32":
            q, key = q.float(), key.float()
        logits = torch.einsum("bkgrd,bknd->bkgrn", q, key) * scaling
        keys = torch.arange(length, device=query.device)
        allowed = self.valid[:, None, :] & (keys[None, None, :] <= place[:, :, None])  # causal, padding masked
        logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1).mean(dim=(1, 2)).float()  # [rows, width, L]
        probs = probs.masked_fill(~used[..., None], 0.0)  # unused slots (fewer raters, padding) may be all-masked
        self.scores = probs.sum(1) / count.clamp(min=1)[:, None]

    def _prune(self, layer_index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Keep each sample's best frame tokens, recycle some pruned ones into merged tokens placed after the visual
        span, re-pad; a merged token takes its centre's place in the full sequence (positions, owner, output row)."""
        if self.scores is None:
            raise RuntimeError("vidpress: the scoring layer did not run before the pruning layer")
        fraction = dict(self.stages)[layer_index]
        budget = self.press.stage_budget(fraction, self.visual_full)  # [rows]
        frame = (self.owner.gather(1, self.index) >= 0) & self.valid
        visual = self.placeholder_full.gather(1, self.index) & self.valid
        if self.per_frame:  # frame_budgets="vidcom2": each frame's own budget, recycled from its own pruned tokens
            quota = self.press.stage_frame_budget(fraction, self.frame_retention, self.frame_size)  # [frames]
            frame_of = self.frame.gather(1, self.index)  # [rows, L'] (a merged token: its centre's frame)
        self.full_hidden = self._scatter_full(hidden)
        rows_index, rows_hidden, recycled = [], [], []
        for row in range(hidden.shape[0]):
            real = self.valid[row].nonzero().squeeze(1)
            current = frame[row].nonzero().squeeze(1)  # sequence places of the frame tokens
            if self.per_frame:
                groups = frame_of[row, current]
                chosen = [self._choose(hidden[row], self.scores[row], current[groups == g], int(quota[g]))
                          for g in groups.unique().tolist()]  # frames in order
            else:
                chosen = [self._choose(hidden[row], self.scores[row], current, int(budget[row]))]
            empty = (current[:0], hidden.new_zeros(0, hidden.shape[-1]), current[:0])  # a row without frame tokens
            kept, merged, centres = (torch.cat(parts) for parts in zip(empty, *chosen))
            keep = torch.zeros_like(frame[row])
            keep[kept] = True
            places = real[keep[real] | ~frame[row, real]]  # kept frame tokens and every other real token, in order
            split = int((places <= int(visual[row].nonzero().max())).sum()) if visual[row].any() else places.numel()
            rows_index.append(torch.cat([self.index[row, places[:split]], self.index[row, centres],
                                         self.index[row, places[split:]]]))
            rows_hidden.append(torch.cat([hidden[row, places[:split]], merged, hidden[row, places[split:]]]))
            recycled.append(self.index[row, centres])
        self.recycled[layer_index] = recycled[:: self.copies]
        index, valid, hidden = self._pad(rows_index, rows_hidden)
        self.end_stage(layer_index, index, valid)
        return hidden

    def _choose(self, hidden: torch.Tensor, scores: torch.Tensor, current: torch.Tensor, budget: int):
        """One pool of frame tokens (a sample's, or one frame's with frame budgets) at a stage with `budget` for it:
        (kept places [k], merged tokens [c, D], their centres' places [c]). hidden [L', D]: one row's layer output;
        scores [L']: its raters' scores; current [n]: sequence places of the pool's frame tokens."""
        kept, clusters = self.press.split_budget(budget, current.numel())
        order = torch.sort(scores[current], descending=True, stable=True).indices
        if not clusters:
            return current[order[:kept]], hidden.new_zeros(0, hidden.shape[-1]), current.new_zeros(0)
        deleted = current[order[kept:]]  # best-scored first
        pool = deleted[: recycled_count(deleted.numel())[0]]
        merged, which = self.press.merge(hidden[pool], clusters)
        return current[order[:kept]], merged, pool[which]

    def _pad(self, rows_index: list[torch.Tensor], rows_hidden: list[torch.Tensor]):
        """Stack ragged rows into (index [rows, L'], valid [rows, L'], hidden [rows, L', D]), padded on the side the
        prompt is padded on."""
        length = max(r.numel() for r in rows_index)
        index = torch.zeros(len(rows_index), length, dtype=torch.long, device=rows_index[0].device)
        valid = torch.zeros(len(rows_index), length, dtype=torch.bool, device=index.device)
        hidden = []
        for row, (idx, h) in enumerate(zip(rows_index, rows_hidden)):
            pad = length - idx.numel()
            slots = slice(pad, length) if self.left else slice(0, idx.numel())
            index[row, slots], valid[row, slots] = idx, True
            hidden.append(F.pad(h, (0, 0, pad, 0) if self.left else (0, 0, 0, pad)))
        return index, valid, torch.stack(hidden)
