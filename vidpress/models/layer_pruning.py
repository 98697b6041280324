"""Dropping video tokens inside the LLM (FastV, PDrop): the machinery behind `LayerPress`.

A press gives a schedule of stages `(layer, fraction)`: from `layer` on, only the best `fraction` of each sample's
video tokens are processed, ranked by the attention the last prompt token pays them. Where that attention comes
from is the press's `scoring`: "previous_layer" (FastV) — the attention of the layer just before, recorded while
it runs; "stage_layer" (PDrop as released) — the stage layer's own attention on the hidden states entering it,
computed in a scoring pass before the layer runs (its input norm, q/k projections and rotary embedding, through
the layer's own attention module; the attention itself is not computed). Hooks, all removed on exit, do the work
without touching transformers' files:

- the scoring layer's attention module runs through `vidpress_scoring`, a registered AttentionInterface function
  that calls the model's own attention (eager, SDPA, ...) and also computes the last query row's attention
  probabilities, [B, H, kv] — never the full [B, H, L, L] matrix;
- a forward pre-hook on every decoder layer from the first stage on cuts the hidden states at the stage's layer
  and gives every later layer position embeddings, text positions and an attention mask for the shorter sequence,
  in prefill and in every decoding step (the cache of those layers holds only the kept tokens);
- a forward pre-hook on the final norm puts the kept rows back at their places in the full-length sequence, so
  the model's output has one row per input token as without the press (labels, losses and `logits[:, i]` line
  up). A dropped token's row is its hidden state when it was dropped: it has no later layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from vidpress.models.attention import AttentionRoute, own_attention
from vidpress.models.report import PressReport
from vidpress.models.sequence import repad_index
from vidpress.types import Selection

SCORING = "vidpress_scoring"


def _scoring_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own attention, plus the last prompt token's attention row recorded for ranking tokens."""
    pruner = module._vidpress_owner
    scaling = kwargs.get("scaling", query.shape[-1] ** -0.5)
    if pruner.scoring_pass:  # a stage layer ranking its own input: only q and k are needed, the output is unused
        pruner.record(query, key, scaling)
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), None
    output = own_attention(module, pruner.attn_implementation)(module, query, key, value, attention_mask, **kwargs)
    # A prefill with video only (report set by `begin`); decoding steps and calls without video are not ranked.
    if query.shape[2] > 1 and not pruner.own_layer and pruner.report is not None:
        pruner.record(query, key, scaling)
    return output


AttentionInterface.register(SCORING, _scoring_attention)


class LayerPruner:
    """Applies a LayerPress's schedule to one model while installed. See the module docstring."""

    def __init__(self, press, adapter):
        self.press, self.adapter = press, adapter
        self.layers = adapter.text_layers()
        num_layers = len(self.layers)
        self.stages = self.plan_stages(num_layers)
        first = self.stages[0][0]
        if first < adapter.min_prune_layer or self.stages[-1][0] >= num_layers:
            raise ValueError(
                f"{type(press).__name__} drops tokens before layers {[s[0] for s in self.stages]}, but this "
                f"{adapter.family} model ({num_layers} LLM layers) accepts layers {adapter.min_prune_layer} to "
                f"{num_layers - 1} only"
                + (" (its DeepStack features enter the first layers)" if adapter.min_prune_layer > 1 else "")
            )
        self.attn_implementation = adapter.config.get_text_config()._attn_implementation
        scoring = press.scoring
        if scoring not in ("previous_layer", "stage_layer"):
            raise ValueError(
                f"{type(press).__name__}.scoring must be 'previous_layer' or 'stage_layer'; got {scoring!r}")
        self.own_layer = scoring == "stage_layer"  # rank with the stage layer's own attention (PDrop as released)
        self.scoring_pass = False
        self.compute_dtype = press.compute_dtype
        self._handles, self._routes = [], []
        self.report: PressReport | None = None

    def plan_stages(self, num_layers: int) -> list[tuple[int, float]]:
        """The press's stages [(layer, fraction)] on this model; a subclass may fit them to the adapter."""
        return self.press.schedule(num_layers)

    # -- install / remove ----------------------------------------------------------------------------------
    def install(self) -> list:
        """Install the hooks and attention routes; returns them (hook handles and routes, each with `remove()`).
        `remove()` removes them all, also after an install that failed half-way."""
        for stage_layer, _ in self.stages:
            scoring_layer = stage_layer if self.own_layer else stage_layer - 1
            route = AttentionRoute(self.layers[scoring_layer].self_attn, SCORING, self)
            route.install()
            self._routes.append(route)
        # Every prefill starts from the full sequence again, also when the same inputs run twice.
        self._handles.append(self.layers[0].register_forward_pre_hook(self._reset_hook, with_kwargs=True))
        self._handles.append(self.adapter.text_norm().register_forward_pre_hook(self._restore_hook))
        for index in range(self.stages[0][0], len(self.layers)):
            self._handles.append(
                self.layers[index].register_forward_pre_hook(self._layer_hook(index), with_kwargs=True)
            )
        return [*self._handles, *self._routes]

    def remove(self):
        for handle in self._handles:
            handle.remove()
        for route in self._routes:
            route.remove()
        self._handles, self._routes = [], []

    # -- per call --------------------------------------------------------------------------------------------
    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, report: PressReport):
        """Start a prefill: which positions hold frame tokens of which video ([B, L] owner / index maps)."""
        B, L = input_ids.shape
        self.report = report
        self.full_length = L
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        owner = torch.full((B, L), -1, dtype=torch.long, device=input_ids.device)
        token = torch.full((B, L), -1, dtype=torch.long, device=input_ids.device)
        placeholders = ((input_ids == self.adapter.video_token_id) & valid).flatten().nonzero().squeeze(1)
        # With per-frame budgets (frame_budgets="vidcom2"): the frame of every frame token, numbered over all videos.
        frame = torch.full((B, L), -1, dtype=torch.long, device=input_ids.device)
        self.frame_retention, self.frame_size, first_frame = [], [], 0
        offset = 0
        for video, (selection, extra) in enumerate(zip(report.selections, report.extra_tokens)):
            positions = placeholders[offset : offset + selection.num_kept]
            owner.view(-1)[positions] = video
            kept = selection.keep_indices.to(positions.device)
            token.view(-1)[positions] = kept
            if self.press.frame_budgets is not None:
                r = self.press.frame_retention_fca(report.videos[video])
                frames = report.videos[video].tokens_per_frame
                frame.view(-1)[positions] = first_frame + kept // frames
                self.frame_retention.append(r.to(input_ids.device))
                self.frame_size.append(torch.full_like(r, frames, dtype=torch.long, device=input_ids.device))
                first_frame += r.numel()
            offset += selection.num_kept + extra
        self.per_frame = bool(self.frame_retention)
        if self.per_frame:
            self.frame_retention, self.frame_size = torch.cat(self.frame_retention), torch.cat(self.frame_size)
        self.prompt = (owner, token, valid, frame)
        # Ranking query: each row's last real prompt token, also when later steps re-run the prefill with the
        # generated tokens appended (use_cache=False), so the ranking is the same with and without a cache.
        self.query_position = L - 1 - valid.flip(1).int().argmax(1)
        self.left = not bool((~valid[:, -1]).any())
        self._start(B, L)

    def _start(self, rows: int, length: int):
        """Maps for a prefill of [rows, length]: generate expands each prompt into `rows / B` copies (beams, several
        return sequences) and, without a cache, appends the generated tokens (never video, always attended)."""
        owner, token, valid, frame = self.prompt
        B, L = owner.shape
        if rows % B or length < L:
            raise RuntimeError(
                f"vidpress: the LLM got [{rows}, {length}] hidden states for a pressed prompt of [{B}, {L}]")
        self.copies = rows // B
        owner, token, valid, frame, query = (t.repeat_interleave(self.copies, dim=0)
                                             for t in (*self.prompt, self.query_position))
        if length > L:
            pad = (0, length - L)
            owner, token, frame = (F.pad(t, pad, value=-1) for t in (owner, token, frame))
            valid = F.pad(valid, pad, value=True)
        self.owner, self.token, self.frame, self.full_valid, self.query_full = owner, token, frame, valid, query
        self.visual_full = (owner >= 0).sum(1)  # [rows] frame tokens per row before any stage
        # current sequence -> full positions
        self.index = torch.arange(length, device=valid.device).expand(rows, length)
        self.valid = valid
        self.stage_state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # stage layer -> (index, valid)
        self.full_hidden: torch.Tensor | None = None  # [rows, length, D]: every token's latest hidden state
        self.layer_tokens = [int(self.visual_full[:: self.copies].sum())] * len(self.layers)
        self.scores = None

    def _reset_hook(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if self.report is not None and (cache is None or cache.get_seq_length(0) == 0):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._start(hidden.shape[0], hidden.shape[1])

    def record(self, query: torch.Tensor, key: torch.Tensor, scaling: float):
        """Head-averaged attention of each row's last real prompt token over the current keys -> self.scores [B, kv]."""
        B, H, _, d = query.shape
        groups = H // key.shape[1]
        last = (self.index == self.query_full[:, None]).int().argmax(1)  # that token's place in the current sequence
        q = query[torch.arange(B), :, last].view(B, key.shape[1], groups, d)  # [B, Hkv, g, d]
        if self.compute_dtype == "float32":  # else in the model's dtype, as the released code
            q, key = q.float(), key.float()
        logits = torch.einsum("bkgd,bknd->bkgn", q, key) * scaling
        # Keys the query may see: real tokens up to and including it. Without a cache the prefill is re-run with the
        # generated tokens appended; they come after the query, so the ranking ignores them, as with a cache.
        seen = self.valid & (self.index <= self.query_full[:, None])
        logits = logits.masked_fill(~seen[:, None, None, :], float("-inf"))
        self.scores = torch.softmax(logits, dim=-1).mean(dim=(1, 2)).float()  # [B, kv]

    def _score_in_layer(self, layer, layer_index: int, hidden: torch.Tensor, kwargs: dict) -> None:
        """Rank with `layer`'s own attention on the hidden states entering it (before they are cut): its input
        norm, then its attention module, whose q and k (with rotary positions) reach `record` in a scoring pass."""
        if not hasattr(layer, "input_layernorm"):
            raise ValueError(f"{type(self.press).__name__} ranks with the stage layer's own attention and needs its "
                             f"`input_layernorm`; {type(layer).__name__} has none")
        embeddings = kwargs.get("position_embeddings")
        index, _ = self._active(layer_index)  # the sequence as cut by earlier stages
        if index is not None and embeddings is not None:
            embeddings = tuple(_gather_embedding(t, index) for t in embeddings)
        self.scoring_pass = True
        try:
            with torch.no_grad():
                layer.self_attn(hidden_states=layer.input_layernorm(hidden), attention_mask=None,
                                position_embeddings=embeddings, past_key_values=None)
        finally:
            self.scoring_pass = False

    def _layer_hook(self, layer_index: int):
        def hook(module, args, kwargs):
            if self.report is None:
                return None
            hidden = args[0] if args else kwargs.pop("hidden_states")
            cache = kwargs.get("past_key_values")
            prefill = cache is None or cache.get_seq_length(layer_index) == 0
            if prefill and layer_index in dict(self.stages):
                if self.own_layer:
                    self._score_in_layer(module, layer_index, hidden, kwargs)
                hidden = self._prune(layer_index, hidden)
            index, valid = self._active(layer_index)
            if index is None:
                return None
            kwargs = self._cut_kwargs(kwargs, layer_index, index, valid, hidden.shape[1], prefill)
            return (hidden, *args[1:]), kwargs

        return hook

    def _active(self, layer_index: int):
        active = [layer for layer in self.stage_state if layer <= layer_index]
        return self.stage_state[max(active)] if active else (None, None)

    def _prune(self, layer_index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Keep the best-ranked frame tokens of each sample; re-pad; remember the stage's index into the full
        sequence."""
        if self.scores is None:
            raise RuntimeError("vidpress: the scoring layer did not run before the pruning layer")
        frame = (self.owner.gather(1, self.index) >= 0) & self.valid
        keep = (self.valid & ~frame) | self.frame_tokens_kept(layer_index, frame)
        self.full_hidden = self._scatter_full(hidden)
        hidden = self.press.fold_pruned(hidden, keep, frame)  # merging presses (HoliTom) fold the pruned tokens in
        gather, valid = repad_index(keep, self.left)
        hidden = hidden.gather(1, gather[..., None].expand(-1, -1, hidden.shape[-1])) * valid[..., None]
        self.end_stage(layer_index, self.index.gather(1, gather), valid)
        return hidden

    def end_stage(self, layer_index: int, index: torch.Tensor, valid: torch.Tensor) -> None:
        """After the stage at `layer_index` cut the sequence to `index` / `valid` [rows, L']: keep them for the
        layers after it, count the frame tokens those layers process, and finish after the last stage."""
        self.index, self.valid = index, valid
        self.stage_state[layer_index] = (index, valid)
        kept = int((self.owner.gather(1, index) >= 0).logical_and(valid)[:: self.copies].sum())
        for layer in range(layer_index, len(self.layers)):
            self.layer_tokens[layer] = kept
        self.scores = None
        if layer_index == self.stages[-1][0]:
            self._finish()

    def frame_tokens_kept(self, layer_index: int, frame: torch.Tensor) -> torch.Tensor:
        """[rows, L'] mask of the frame tokens (`frame`, [rows, L'] over the current sequence) the stage at
        `layer_index` keeps, best `self.scores` first (ties to the earlier token): the press's `stage_budget` per
        sample, or with frame_budgets="vidcom2" its `stage_frame_budget` per frame. A pruner subclass that does more
        with the dropped tokens takes its kept set from here, so both budget modes hold for it too."""
        fraction = dict(self.stages)[layer_index]
        order = torch.sort(self.scores.masked_fill(~frame, float("-inf")), dim=1, descending=True, stable=True).indices
        if self.per_frame:
            return self._keep_per_frame(order, frame, fraction)
        budget = self.press.stage_budget(fraction, self.visual_full)
        rank = torch.empty_like(order).scatter_(1, order,
                                                torch.arange(order.shape[1], device=order.device).expand_as(order))
        return frame & (rank < budget[:, None])

    def _keep_per_frame(self, order: torch.Tensor, frame: torch.Tensor, fraction: float) -> torch.Tensor:
        """[rows, L'] mask of the frame tokens each frame keeps at a stage keeping `fraction` of the video: its
        `stage_frame_budget` best, by the score order `order` [rows, L'] (best first, ties to the earlier token)."""
        quota = self.press.stage_frame_budget(fraction, self.frame_retention, self.frame_size)  # [frames]
        group = self.frame.gather(1, self.index).masked_fill(~frame, -1)  # [rows, L'], -1: not a frame token
        # Stable sort by frame of the score order: each frame's tokens best first, then rank = place - frame start.
        by_frame = order.gather(1, torch.sort(group.gather(1, order), dim=1, stable=True).indices)
        sorted_group = group.gather(1, by_frame).contiguous()
        place = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = place - torch.searchsorted(sorted_group, sorted_group)
        kept = (sorted_group >= 0) & (rank < quota[sorted_group.clamp(min=0)])
        return torch.zeros_like(kept).scatter_(1, by_frame, kept)

    def _scatter_full(self, hidden: torch.Tensor) -> torch.Tensor:
        """The full-length hidden states [rows, length, D] with the current sequence's real rows written in."""
        if self.full_hidden is None and hidden.shape[1] == self.index.shape[1]:  # nothing cut yet
            return hidden
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None].expand_as(self.index)
        return self.full_hidden.index_put((rows[self.valid], self.index[self.valid]), hidden[self.valid])

    def _restore_hook(self, module, args):
        if self.report is None or self.full_hidden is None:  # no prefill cut since the last restore
            return None
        hidden, self.full_hidden = self._scatter_full(args[0]), None
        return (hidden, *args[1:])

    def _finish(self):
        """Write what survived the last stage back into the report, per video, with the per-layer token counts."""
        # the first copy of each prompt speaks for all (copies are identical until decoding starts)
        owner = self.owner.gather(1, self.index).masked_fill(~self.valid, -1)[:: self.copies]
        token = self.token.gather(1, self.index)[:: self.copies]
        selections = []
        for video, before in enumerate(self.report.selections):
            kept = token[owner == video].sort().values
            selections.append(Selection(kept, before.num_tokens))
        self.report.selections = selections
        self.report.layer_tokens = list(self.layer_tokens)

    def _cut_kwargs(self, kwargs: dict, layer_index: int, index: torch.Tensor, valid: torch.Tensor, query_length: int,
                    prefill: bool) -> dict:
        """Position embeddings, text positions and the attention mask for the kept sequence."""
        if prefill:
            if kwargs.get("position_embeddings") is not None:
                kwargs["position_embeddings"] = tuple(_gather_embedding(t, index)
                                                      for t in kwargs["position_embeddings"])
            if isinstance(kwargs.get("position_ids"), torch.Tensor):
                positions = kwargs["position_ids"]
                kwargs["position_ids"] = positions.expand(index.shape[0], -1).gather(-1, index)
            generated = 0
        else:  # this layer's cache holds the kept prompt and the tokens generated before this step
            generated = kwargs["past_key_values"].get_seq_length(layer_index) - index.shape[1] + query_length
        kwargs["attention_mask"] = self._mask(kwargs.get("attention_mask"), index, valid, query_length, generated)
        return kwargs

    def _mask(self, mask, index: torch.Tensor, valid: torch.Tensor, query_length: int, generated: int):
        """4-D mask [B, 1, q, kept + generated] in the format the model's attention expects (bool or additive)."""
        B, kept = index.shape
        device = index.device
        if generated == 0:  # prefill: causal over the kept prompt, padding masked
            allowed = torch.ones(kept, kept, dtype=torch.bool, device=device).tril()[None] & valid[:, None, :]
            allowed |= torch.eye(kept, dtype=torch.bool, device=device)[None]  # pad rows attend to themselves
            allowed = allowed[:, None]
        else:  # decoding: every kept prompt token, then the generated tokens as the model's own mask says
            if mask is None:
                recent = torch.ones(B, 1, query_length, generated, dtype=torch.bool, device=device)
                recent = recent & torch.ones(query_length, generated, dtype=torch.bool, device=device).tril(
                    generated - query_length)
            else:
                recent = mask[..., self.full_length :]
                recent = recent if recent.dtype == torch.bool else recent == 0
            allowed = torch.cat([valid[:, None, None, :].expand(-1, 1, query_length, -1), recent], dim=-1)
        if mask is not None and mask.dtype == torch.bool or mask is None and self.attn_implementation != "eager":
            return allowed
        dtype = mask.dtype if mask is not None else torch.float32
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def _gather_embedding(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather rotary cos/sin [..., B or 1, L, d] along the sequence with index [B, L']."""
    *lead, _, _, d = tensor.shape
    B, kept = index.shape
    tensor = tensor.expand(*lead, B, tensor.shape[-2], d)
    return tensor.gather(-2, index[..., None].expand(*lead, B, kept, d))
