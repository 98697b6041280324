"""Encoder reuse: temporal groups whose pixels barely changed reuse an earlier group's vision-encoder output.

After a press prunes a video's tokens, the vision encoder, which still sees every frame, dominates the cost of a
request. The idea is STC's cacher (Wang et al., arXiv 2512.00891, CVPR 2026): frames that follow a reference frame
and barely differ from it reuse the reference's encoder work. The released cacher reuses rows inside every layer
of a SigLIP encoder (recomputing the least key-similar quarter); here whole temporal groups are reused, decided
on the pixels before the encoder runs, which is what makes it save encoder time in Qwen-VL vision towers:

- Qwen2.5-VL's and Qwen3-VL's vision towers attend within one temporal group only (window attention inside a
  frame, full attention over one group's patches; rotary / position embeddings depend on (h, w) alone), so
  encoding only the changed groups as a (t', h, w) grid gives exactly their features in the full encoding.
- Rule, per video, in time order: group 0 is encoded and is the reference. Group g is compared with the current
  reference r: change(g) = max over merged tokens of the mean |pixels_g - pixels_r| over the token's patch rows
  (normalised pixel values, the processor's output). change(g) < threshold: g reuses r's features; otherwise g
  is encoded and becomes the reference. Comparing with the reference, not the previous group, stops slow drift
  from accumulating; the max over tokens means one changed 28x28 token (a flash, a moving object) is enough to
  re-encode the group.

The press then runs on the assembled features [T, M, D] as usual, so the retained count (vLLM's contract) does
not change. A reused group's tokens equal its reference's, so presses scoring temporal change (evs, vidcom2,
dycoke) see it as redundant. Accuracy is lost when the change that matters is smaller than the threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: key of the option inside the vidpress settings of `--additional-config`
REUSE_KEY = "encoder_reuse_threshold"


def reuse_threshold_from(settings: dict) -> float | None:
    """Pop and check the encoder-reuse threshold from the vidpress settings: None (off) or a float > 0."""
    value = settings.pop(REUSE_KEY, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0.0:
        raise ValueError(
            f"vidpress: {REUSE_KEY} must be a number >= 0 (the largest per-token mean absolute change of normalised "
            f"pixels for which a temporal group reuses its reference's encoder output; 0 reuses nothing); got "
            f"{value!r}"
        )
    return float(value)


def reuse_plan(pixels: torch.Tensor, unit: int, threshold: float) -> torch.Tensor:
    """Which group each temporal group takes its encoder output from.

    pixels: one video's patch rows [T, P, C] (P patches per temporal group, consecutive runs of `unit` rows form
    one merged token, as Qwen-VL processors order them). Returns source [T] (long): source[g] == g for encoded
    groups, else the reference group g reuses (always an encoded group before g).
    """
    T, P, _ = pixels.shape
    if P % unit:
        raise ValueError(f"vidpress: {P} patch rows per group do not form tokens of {unit} rows")
    source = torch.arange(T)
    reference = 0
    for g in range(1, T):
        change = (pixels[g] - pixels[reference]).abs().reshape(P // unit, -1).mean(-1).max()
        if float(change) < threshold:
            source[g] = reference
        else:
            reference = g
    return source


def encode_with_reuse(
    encode: Callable[[torch.Tensor, list[list[int]]], torch.Tensor],
    pixel_values: torch.Tensor,
    grids: list[list[int]],
    merge: int,
    threshold: float,
    normalized: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Encode the videos of one batch, reusing unchanged temporal groups.

    encode: the vision tower, (patch rows [R, C], grids [[t, h, w], ...]) -> features [sum t*h*w / merge^2, D].
    pixel_values: every video's patch rows [sum t*h*w, C] as the tower takes them, grids: each video's (t, h, w)
    in patches. normalized: the same rows as normalised float pixels, in which the threshold is stated (vLLM may
    pass raw uint8 rows that its tower normalises); None: pixel_values are normalised already.
    Returns (features per video [t*h*w / merge^2, D], source per video [t] as in `reuse_plan`). When nothing is
    reused the tower runs once on the inputs as given (identical to the plain encoder).
    """
    unit = merge * merge
    normalized = pixel_values if normalized is None else normalized
    plans, rows = [], []
    start = 0
    for t, h, w in grids:
        video = pixel_values[start : start + t * h * w].reshape(t, h * w, -1)
        plans.append(reuse_plan(normalized[start : start + t * h * w].reshape(t, h * w, -1).float(), unit, threshold))
        start += t * h * w
        rows.append(video)
    if all(bool((plan == torch.arange(len(plan))).all()) for plan in plans):
        features = encode(pixel_values, grids)
        return features.split([t * h * w // unit for t, h, w in grids]), plans
    encoded = [torch.unique(plan) for plan in plans]  # sorted: the encoded groups of each video
    subset = torch.cat([video[groups.to(video.device)].reshape(-1, video.shape[-1])
                        for video, groups in zip(rows, encoded)])
    features = encode(subset, [[len(groups), h, w] for groups, (_, h, w) in zip(encoded, grids)])
    out = []
    for chunk, plan, groups, (t, h, w) in zip(
        features.split([len(g) * h * w // unit for g, (_, h, w) in zip(encoded, grids)]), plans, encoded, grids
    ):
        per_group = chunk.reshape(len(groups), h * w // unit, -1)
        slot = torch.searchsorted(groups, plan)  # row of each group's source among the encoded groups
        out.append(per_group[slot.to(per_group.device)].reshape(t * h * w // unit, -1))
    return tuple(out), plans


def transformers_video_features(model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor,
                                threshold: float) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """The same reuse through a transformers Qwen-VL model's public `get_video_features` (the offline twin of the
    vLLM option, for accuracy checks): (merged features per video [N_v, D], source groups per video [T_v]).
    Models whose video features carry DeepStack levels (Qwen3-VL) are refused: this helper reuses main features
    only."""

    def encode(rows, grids):
        out = model.get_video_features(rows, torch.tensor(grids, device=rows.device), return_dict=True)
        if getattr(out, "deepstack_features", None) is not None:
            raise ValueError("vidpress: transformers_video_features reuses main features only; this model's video "
                             "features carry DeepStack levels (Qwen3-VL), which it would not reuse")
        return torch.cat(out.pooler_output)

    merge = model.config.vision_config.spatial_merge_size
    return encode_with_reuse(encode, pixel_values_videos, video_grid_thw.tolist(), merge, threshold)


__all__ = ["REUSE_KEY", "encode_with_reuse", "reuse_plan", "reuse_threshold_from", "transformers_video_features"]
