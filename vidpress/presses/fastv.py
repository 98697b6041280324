"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

After LLM layer K, only the visual tokens that the last token attended to most in layer K-1 (head-averaged
attention) are processed by the remaining layers. Acts inside the LLM; needs one row of attention probabilities
from the scoring layer, which vidpress computes next to the model's own attention (any implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpress.presses.base import LayerPress


@dataclass
class FastVPress(LayerPress):
    """FastV with the kept share set so that the layer-averaged retention equals `retention`.

    Args:
        retention: frame tokens processed, averaged over the LLM's N layers: (K + (N - K) * kept share) / N.
        layer: K, the layer from which tokens are dropped (2 in the paper); ranking uses layer K - 1.
    """

    layer: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"layer must be an integer >= 1 (tokens are ranked in layer - 1); got {self.layer!r}")

    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        if self.layer >= num_layers:
            raise ValueError(f"layer must be below the LLM's {num_layers} layers; got {self.layer}")
        share = (self.retention * num_layers - self.layer) / (num_layers - self.layer)
        return [(self.layer, min(1.0, max(0.0, share)))]
