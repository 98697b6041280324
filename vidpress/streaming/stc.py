"""STC-Cacher (Wang et al., arXiv 2512.00891, CVPR 2026; authors' release 9b13ce0): reuse vision-encoder work for
frames that follow a reference frame.

Frames are counted from 0 per stream; frame c is a reference iff c % cache_interval == 0 (released: 2). In every
encoder layer (pre-LN ViT layers: SigLIP, CLIP):
- a reference frame runs the full layer and stores its key and value projections [P, C], its attention output
  (after out_proj) and its MLP output;
- any other frame computes keys for all P patches (h1 = LN1(h), K = k_proj(h1)), takes the u = max(1, min(int(P *
  update_ratio), P)) patches whose key is LEAST cosine-similar to the reference key at the same patch (released
  update_ratio 0.25), computes queries and values only for them, attends with those queries over ALL new keys and
  the reference values with their rows replaced, replaces those rows of the reference attention output, adds it to
  its own residual stream, and runs the MLP on the same rows only (the others take the reference MLP output).
The released "reuse when cosine > 0.85" rule of the paper text is not in the code and not here. No attention map
is returned, so presses needing vision attention cannot run with the cacher.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger("vidpress")


def _cacheable(layer) -> bool:
    attn = getattr(layer, "self_attn", None)
    return all(isinstance(getattr(layer, n, None), torch.nn.Module) for n in ("layer_norm1", "layer_norm2", "mlp")) \
        and attn is not None and all(isinstance(getattr(attn, n, None), torch.nn.Linear)
                                     for n in ("q_proj", "k_proj", "v_proj", "out_proj"))


class STCEncoderCache:
    """The cacher over `layers` (pre-LN ViT encoder layers, in order). Use `active()` around one encoder call of
    one stream's frames [F, P, C] (in stream order); `work_saved` is the share of per-layer patch rows whose
    query/value/attention/MLP work was reused."""

    def __init__(self, layers, cache_interval: int = 2, update_ratio: float = 0.25):
        if isinstance(cache_interval, bool) or not isinstance(cache_interval, int) or cache_interval < 1:
            raise ValueError(f"cache_interval must be a positive integer; got {cache_interval!r}")
        if not 0 < update_ratio <= 1:
            raise ValueError(f"update_ratio must be in (0, 1]; got {update_ratio!r}")
        self.layers = list(layers)
        self.cache_interval, self.update_ratio = cache_interval, update_ratio
        self.reset()

    @classmethod
    def for_model(cls, adapter, **knobs) -> STCEncoderCache | None:
        """The cacher over the model's vision encoder layers, or None (logged) where they are not pre-LN ViT
        layers the cacher knows (Qwen's vision blocks: packed sequences with rotary positions)."""
        try:
            layers = adapter.vision_layers()
        except (AttributeError, ValueError):
            layers = None
        if not layers or not all(_cacheable(layer) for layer in layers):
            logger.warning("STC: the encoder cache needs SigLIP/CLIP-style vision layers; %s has none, so only the "
                           "pruner runs (encoder work saved stays 0)", adapter.family)
            return None
        return cls(layers, **knobs)

    def reset(self) -> None:
        self.frame = 0
        self.reference: list[dict | None] = [None] * len(self.layers)
        self.rows_total = 0
        self.rows_reused = 0
        self._frames_in_call = 0

    @property
    def work_saved(self) -> float:
        return self.rows_reused / self.rows_total if self.rows_total else 0.0

    @contextlib.contextmanager
    def active(self):
        """Run the encoder's layers through the cacher inside this block (one call: the frames of one chunk)."""
        self._frames_in_call = 0
        for i, layer in enumerate(self.layers):
            layer.forward = self._layer_forward(i, layer)
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.forward  # back to the class's own forward
            self.frame += self._frames_in_call

    def _layer_forward(self, i: int, layer):
        def forward(hidden_states, *args, **kwargs):
            frames = hidden_states.shape[0]
            self._frames_in_call = frames
            out = torch.empty_like(hidden_states)
            for f in range(frames):
                if (self.frame + f) % self.cache_interval == 0 or self.reference[i] is None:
                    out[f] = self._full(i, layer, hidden_states[f])
                else:
                    out[f] = self._partial(i, layer, hidden_states[f])
            return out

        return forward

    @staticmethod
    def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Non-causal multi-head attention: q [U, C], k/v [P, C] -> out_proj output [U, C]."""
        heads = attn.num_heads
        split = lambda x: x.view(x.shape[0], heads, -1).transpose(0, 1)[None]  # noqa: E731  -> [1, H, n, d]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scale)
        return attn.out_proj(out[0].transpose(0, 1).reshape(q.shape[0], -1))

    def _full(self, i: int, layer, h: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        h1 = layer.layer_norm1(h)
        k, v = attn.k_proj(h1), attn.v_proj(h1)
        a = self._attend(attn, attn.q_proj(h1), k, v)
        h = h + a
        m = layer.mlp(layer.layer_norm2(h))
        self.reference[i] = {"k": k, "v": v, "attn": a, "mlp": m}
        self.rows_total += h.shape[0]
        return h + m

    def _partial(self, i: int, layer, h: torch.Tensor) -> torch.Tensor:
        attn, ref = layer.self_attn, self.reference[i]
        P = h.shape[0]
        h1 = layer.layer_norm1(h)
        k = attn.k_proj(h1)
        u = max(1, min(int(P * self.update_ratio), P))
        similarity = F.cosine_similarity(k, ref["k"], dim=-1)
        update = torch.sort(similarity, stable=True).indices[:u]  # the least similar patches
        v = ref["v"].clone()
        v[update] = attn.v_proj(h1[update])
        a = ref["attn"].clone()
        a[update] = self._attend(attn, attn.q_proj(h1[update]), k, v)
        h = h + a
        m = ref["mlp"].clone()
        m[update] = layer.mlp(layer.layer_norm2(h[update]))
        self.rows_total += P
        self.rows_reused += P - u
        return h + m
