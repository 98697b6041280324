"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

After LLM layer K, only the visual tokens that the last token attended to most in layer K-1 (head-averaged
attention) are processed by the remaining layers. Acts inside the LLM; needs one row of attention probabilities
from the scoring layer, which vidpress computes next to the model's own attention (any implementation). Follows the
released code's ranking exactly (layer K-1's attention, last token as query, mean over heads).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpress.presses.base import LayerPress, check_compute_dtype, register


@register("fastv")
@dataclass
class FastVPress(LayerPress):
    """FastV with the kept share set so that the layer-averaged retention equals `retention`.

    `retention` R is the share of frame tokens the N LLM layers process on average; the paper's knob is the share r
    kept "after layer K". They convert as R = (K + (N - K) * r) / N and r = (R * N - K) / (N - K). Example,
    Qwen2.5-VL-7B (N = 28), K = 2: the paper's r = 0.5 is R = (2 + 26 * 0.5) / 28 = 0.536; R = 0.25 keeps
    r = (7 - 2) / 26 = 0.192 after layer 2; the floor (r = 0) is R = K / N = 0.071.

    Args:
        retention: frame tokens processed, averaged over the LLM's N layers: (K + (N - K) * kept share) / N.
        layer: K, the layer from which tokens are dropped (2 in the paper); ranking uses layer K - 1.
        compute_dtype: "float32" (default) or "model": the attention row in the model's dtype, as the released
            code (see `vidpress.presses.base.check_compute_dtype`).
    """

    layer: int = 2
    compute_dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"layer must be an integer >= 1 (tokens are ranked in layer - 1); got {self.layer!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        if self.layer >= num_layers:
            raise ValueError(f"layer must be below the LLM's {num_layers} layers; got {self.layer}")
        share = (self.retention * num_layers - self.layer) / (num_layers - self.layer)
        return [(self.layer, min(1.0, max(0.0, share)))]
