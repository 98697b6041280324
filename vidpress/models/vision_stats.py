"""Per-token statistics of one vision-encoder attention layer, recorded while the model's own vision encoder runs.

Presses that rank tokens inside the vision encoder (VisionZip) need, for one encoder layer, the attention every
patch receives and the patch keys. `VisionStatsRecorder` gets them without a second encoder pass and without
touching transformers' files: while it is installed, that one attention module runs through `vidpress_vision_stats`,
a registered AttentionInterface function that calls the model's own attention implementation (eager, SDPA, flash,
...) and records, per attention sequence (a batch row, or a chunk of a packed sequence):

- received [n]: attention each key receives, averaged over heads and query rows;
- first_row [n]: the first query's attention row averaged over heads ([CLS] attention where token 0 is a [CLS]);
- keys [n, d]: the keys the attention saw, averaged over heads (after any rotary embedding).

Sequences are kept in call order, which is the encoder's own token order; the family adapter maps them to the
tokens the LLM sees (`Adapter.vision_token_stats`).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from vidpress.models.attention import AttentionRoute, own_attention

VISION_STATS = "vidpress_vision_stats"

# Attention probabilities are computed (when the implementation does not return them) in blocks of at most this
# many elements, so a long packed sequence never materialises a full [H, n, n] matrix at once.
_BLOCK_ELEMENTS = 1 << 25


def _stats_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own attention, plus the per-key statistics of `VisionStatsRecorder` recorded on the side."""
    recorder = module._vidpress_owner
    output = own_attention(module, recorder.attn_implementation)(module, query, key, value, attention_mask, **kwargs)
    recorder.record(query, key, attention_mask, output[1], kwargs)
    return output


AttentionInterface.register(VISION_STATS, _stats_attention)


class VisionStatsRecorder:
    """Context manager: while open, `attention` (one vision attention module) records per-key statistics.

    The module's config is swapped for a copy naming `vidpress_vision_stats` as its attention implementation and
    restored on exit (also on exceptions); no hook or attribute is left behind.
    """

    def __init__(self, attention: torch.nn.Module):
        self.attention = attention
        self.route = AttentionRoute(attention, VISION_STATS, self)
        self.attn_implementation = self.route.implementation
        self.received: list[torch.Tensor] = []
        self.first_row: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def __enter__(self) -> VisionStatsRecorder:
        self.route.install()
        return self

    def __exit__(self, *exc):
        self.route.remove()
        return False

    # -- recording ---------------------------------------------------------------------------------------------
    def record(self, query, key, attention_mask, weights, kwargs: dict):
        """Record one attention call: query [b, H, n, d], key [b, Hkv, n, d]; `weights` [b, H, n, n] if returned."""
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is not None and query.shape[0] == 1 and weights is None:
            # one packed row holding several sequences (variable-length flash attention): split it
            bounds = cu_seqlens.tolist()
            for start, end in zip(bounds[:-1], bounds[1:]):
                self._record(query[:, :, start:end], key[:, :, start:end], None, None, kwargs)
            return
        self._record(query, key, attention_mask, weights, kwargs)

    def _record(self, query, key, attention_mask, weights, kwargs: dict):
        if weights is None or weights.shape[-1] != key.shape[-2]:
            weights = None
        if weights is not None:  # eager attention returned its probabilities: use them as they are
            received = weights.float().mean(dim=(1, 2))
            first_row = weights[:, :, 0].float().mean(dim=1)
        else:
            scaling = kwargs.get("scaling")
            received, first_row = attention_received(
                query, key, query.shape[-1] ** -0.5 if scaling is None else scaling, attention_mask
            )
        keys = key.float().mean(dim=1)  # [b, n, d]
        self.received.extend(received.unbind(0))
        self.first_row.extend(first_row.unbind(0))
        self.keys.extend(keys.unbind(0))

    # -- results -----------------------------------------------------------------------------------------------
    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All sequences concatenated in the encoder's order: received [N], first_row [N], keys [N, d]."""
        self._check_recorded()
        return torch.cat(self.received), torch.cat(self.first_row), torch.cat(self.keys)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Equal-length sequences stacked: received [S, n], first_row [S, n], keys [S, n, d]."""
        self._check_recorded()
        return torch.stack(self.received), torch.stack(self.first_row), torch.stack(self.keys)

    def _check_recorded(self):
        if not self.received:
            raise RuntimeError(
                "vidpress: the vision attention layer chosen for statistics did not run through its attention "
                "interface during get_video_features (this transformers version may compute it another way)"
            )


def attention_received(query: torch.Tensor, key: torch.Tensor, scaling: float, attention_mask=None):
    """softmax(q k^T * scaling) statistics without keeping the full matrix.

    query [b, H, nq, d], key [b, Hkv, nk, d] (H a multiple of Hkv), optional mask broadcastable to [b, H, nq, nk]
    (bool: True = attend; float: added to the logits). Returns (received [b, nk]: mean over heads and query rows,
    first_row [b, nk]: query 0's row averaged over heads), in float32.
    """
    b, H, nq, _ = query.shape
    groups = H // key.shape[1]
    q = query.float()
    k = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    nk = k.shape[2]
    step = max(1, _BLOCK_ELEMENTS // max(1, b * H * nk))
    total = torch.zeros(b, H, nk, device=query.device)
    first_row = None
    for start in range(0, nq, step):
        logits = torch.matmul(q[:, :, start : start + step], k.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            mask = attention_mask[..., start : start + step, :] if attention_mask.shape[-2] > 1 else attention_mask
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        probs = torch.softmax(logits, dim=-1)
        if first_row is None:
            first_row = probs[:, :, 0].mean(dim=1)
        total += probs.sum(dim=2)
    return total.mean(dim=1) / nq, first_row
