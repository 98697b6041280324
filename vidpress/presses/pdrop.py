"""PyramidDrop (Xing et al., CVPR 2025).

The LLM is split into stages at fixed depths (1/4, 1/2, 3/4); at the start of stage s only a share lambda^s of
the frame tokens is kept, ranked by the attention of the last instruction token in the layer before. Acts inside
the LLM; needs one row of attention probabilities per stage boundary (computed next to the model's own attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpress.presses.base import LayerPress


@dataclass
class PDropPress(LayerPress):
    """PyramidDrop with lambda chosen so that the layer-averaged retention equals `retention`.

    Args:
        retention: frame tokens processed, averaged over the LLM's layers. lambda = 0.5 (the paper's default:
            keep 1/2, 1/4, 1/8) gives 0.47 on a model whose depth splits evenly in four.
        stage_depths: where stages start, as fractions of the depth (rounded to layers >= 1, duplicates merged).
    """

    stage_depths: tuple[float, ...] = (0.25, 0.5, 0.75)

    def __post_init__(self):
        super().__post_init__()
        self.stage_depths = tuple(float(d) for d in self.stage_depths)
        if not self.stage_depths or any(not 0 < d < 1 for d in self.stage_depths) or list(self.stage_depths) != sorted(self.stage_depths):
            raise ValueError(f"stage_depths must be increasing fractions in (0, 1); got {self.stage_depths!r}")

    def stage_layers(self, num_layers: int) -> list[int]:
        layers = sorted({min(num_layers - 1, max(1, round(d * num_layers))) for d in self.stage_depths})
        if num_layers < 2:
            raise ValueError(f"PDrop needs an LLM with at least 2 layers; got {num_layers}")
        return layers

    def schedule(self, num_layers: int) -> list[tuple[int, float]]:
        layers = self.stage_layers(num_layers)
        spans = [b - a for a, b in zip(layers, layers[1:] + [num_layers])]

        def average(lam: float) -> float:
            return (layers[0] + sum(span * lam ** (s + 1) for s, span in enumerate(spans))) / num_layers

        low, high = 0.0, 1.0  # average() increases with lambda: bisect for the requested retention
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if average(mid) < self.retention else (low, mid)
        lam = (low + high) / 2
        return [(layer, lam ** (s + 1)) for s, layer in enumerate(layers)]
