"""PyramidDrop (Xing et al., CVPR 2025).

The LLM is split into stages at fixed depths (1/4, 1/2, 3/4); at the start of stage s only a share lambda^s of
the frame tokens is kept, ranked by the attention of the last instruction token. As released, each stage ranks with
the stage layer's OWN attention on the hidden states entering it, and the dropped tokens leave before that layer
runs. Acts inside the LLM; needs one row of attention probabilities per stage (computed by a scoring pass through
the stage layer's own attention module, any implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpress.presses.base import LayerPress, check_compute_dtype, register


@register("pdrop")
@dataclass
class PDropPress(LayerPress):
    """PyramidDrop with lambda chosen so that the layer-averaged retention equals `retention`.

    Rule at each stage layer l (released code, the default): apply layer l's input norm to the hidden states
    entering it, project the last instruction (prompt) token's query and the video tokens' keys with layer l's
    q/k projections and rotary positions, softmax over the sequence, mean over heads; keep the top
    int(lambda^s * V) video tokens of the V the sample started with (at least one); the others leave before layer
    l runs. `scoring="previous_layer"` ranks with layer l - 1's attention instead (vidpress's earlier rule, FastV's).
    Kept tokens keep their original positions; the released code renumbers positions after each drop, which
    vidpress does not do (M-RoPE positions carry the video's time and space).

    `retention` R vs the paper's lambda: with N layers and stages at layers l_1 < l_2 < l_3 (spans
    n_s = l_{s+1} - l_s, n_3 = N - l_3), R = (l_1 + sum_s n_s * lambda^s) / N; lambda is solved from R by bisection.
    Example, N = 28 (Qwen2.5-VL-7B), stages 7 / 14 / 21: the paper's lambda = 0.5 is R = (1 + 0.5 + 0.25 + 0.125) / 4
    = 0.469; R = 0.5 is lambda = 0.544, R = 0.3 is lambda = 0.167; the floor (lambda = 0) is R = l_1 / N = 0.25.

    Args:
        retention: frame tokens processed, averaged over the LLM's layers. lambda = 0.5 (the paper's default:
            keep 1/2, 1/4, 1/8) gives 0.47 on a model whose depth splits evenly in four.
        stage_depths: where stages start, as fractions of the depth (rounded to layers >= 1, duplicates merged).
        scoring: "stage_layer" (released) or "previous_layer".
        compute_dtype: "float32" (default) or "model": the attention row in the model's dtype, as the released
            code (see `vidpress.presses.base.check_compute_dtype`).
    """

    stage_depths: tuple[float, ...] = (0.25, 0.5, 0.75)
    scoring: str = "stage_layer"
    compute_dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        try:
            depths = tuple(float(d) for d in self.stage_depths)
        except (TypeError, ValueError):
            depths = ()
        if not depths or any(not 0 < d < 1 for d in depths) or list(depths) != sorted(depths):
            raise ValueError(f"stage_depths must be increasing fractions in (0, 1); got {self.stage_depths!r}")
        self.stage_depths = depths
        if self.scoring not in ("stage_layer", "previous_layer"):
            raise ValueError(f"scoring must be 'stage_layer' (released: the stage layer's own attention) or "
                             f"'previous_layer'; got {self.scoring!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype)

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
        # Rounded so that a retention meant for a round lambda (0.5) gives exactly it: int() counts below must not
        # lose a token to 0.49999999.
        lam = round((low + high) / 2, 12)
        return [(layer, lam ** (s + 1)) for s, layer in enumerate(layers)]

    def stage_budget(self, fraction: float, frame_tokens: torch.Tensor) -> torch.Tensor:
        """int(fraction * frame_tokens) per sample, as released, at least 1. [B] -> [B]."""
        return (fraction * frame_tokens.double()).floor().long().clamp(min=1)
