"""VidCom²'s per-frame budgets, its Frame Compression Adjustment (FCA) (Liu et al., arXiv 2505.14454, EMNLP 2025).

Frames that differ most from the whole video get a larger share of the token budget. `VidCom2Press` keeps, inside
each frame, its own choice of tokens; any per-token press that declares `supports_frame_budgets` takes the same
budgets with `frame_budgets="vidcom2"` and keeps its own ranking inside each frame (the paper: FCA "is compatible
with other token compression methods"; no released code composes them, the rule for other presses is vidpress's).
One implementation serves both.

Budgets (the released rule), for X [T, M, D] after the projector and a retention R:
  1. keep the floor(D * channel_ratio) channels of lowest variance over all T * M tokens, L2-normalise every token;
  2. sv[t, m] = K(x[t, m], video centre), sf[t, m] = K(x[t, m], frame centre t), with the multi-scale Gaussian
     K(x, c) = sum over a in alphas of exp(-||x - c||^2 / (2a)) (or cosine similarity, the paper's variant);
  3. frame uniqueness u[t] = -mean_m sv[t, m]; p = softmax((u - max u) / tau); r[t] = min(1, R * (1 + p[t] - 1/T));
  4. k[t] = max(1, round(r[t] * M)) tokens in frame t.
A press that drops in stages (PDrop; FastV's single stage) keeps, at a stage that keeps a share f of the video,
min(current, max(1, round(f * M * r[t] / R))) tokens of frame t (`stage_frame_budgets`).
"""

from __future__ import annotations

import torch

#: Accepted values of the presses' `frame_budgets` knob (None: the press's own budgets).
FRAME_BUDGETS = ("vidcom2",)
#: VidCom²'s released defaults, used when another press takes its budgets.
TAU = 0.01
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)
CHANNEL_RATIO = 0.5


@torch.no_grad()  # scores only rank tokens and size budgets; the in-place row buffers below need no autograd
def similarities(x: torch.Tensor, alphas=ALPHAS, channel_ratio: float = CHANNEL_RATIO,
                 similarity: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity of every token of x [T, M, D] (in the dtype to compute in) to the video centre (sv) and to its
    frame centre (sf), both [T, M]."""
    T, M, D = x.shape
    num_channels = max(1, int(D * channel_ratio))
    flat = x.reshape(T * M, D)
    # Low-variance channels carry the shared "background"; similarity on them separates redundant tokens.
    channels = torch.topk(_channel_variance(flat), num_channels, largest=False).indices
    # The channel subset is applied as a 0/1 mask on the small vectors (centres), never as a copy of the features,
    # and every sum over tokens is a matrix product: four reads of x in all, no temporaries of its size.
    mask = torch.zeros(D, dtype=x.dtype, device=x.device)
    mask[channels] = 1
    norm = _masked_square_sums(flat, mask).sqrt().view(T, M)  # ||x[t, m]|| over the kept channels
    inverse = 1 / norm.clamp_min(1e-12)  # [T, M]: normalising folded into the products below
    frame_centres = (inverse[:, None, :] @ x).squeeze(1) * (mask / M)  # [T, D], zero off the kept channels
    video_centre = frame_centres.mean(dim=0)  # [D]; every frame has M tokens
    both = torch.stack([video_centre.expand_as(frame_centres), frame_centres], dim=2)  # [T, D, 2]
    dot_video, dot_frame = ((x @ both) * inverse[..., None]).unbind(-1)  # [T, M] each, one pass for both centres
    if similarity == "cosine":
        return (
            dot_video / video_centre.norm().clamp_min(1e-12),
            dot_frame / frame_centres.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        )
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, with ||x||^2 = 1 for every non-zero token: no [T, M, d] temporaries.
    sq_norm = (norm / norm.clamp_min(1e-12)).pow(2)
    sq_video = (sq_norm - 2 * dot_video + video_centre.pow(2).sum()).clamp_min(0)
    sq_frame = (sq_norm - 2 * dot_frame + frame_centres.pow(2).sum(-1, keepdim=True)).clamp_min(0)
    bandwidths = torch.tensor(tuple(alphas), device=x.device, dtype=x.dtype)

    def kernel(sq_dist):  # [T, M] -> [T, M]
        return torch.exp(-sq_dist[..., None] / (2 * bandwidths)).sum(-1)

    return kernel(sq_video), kernel(sq_frame)


def frame_retention(sv: torch.Tensor, retention: float, tau: float = TAU) -> torch.Tensor:
    """Unclamped per-frame retention r[t] = R * (1 + p[t] - 1/T) from sv [T, M]; [T], it averages to R."""
    uniqueness = -sv.mean(dim=1)  # [T]
    p = torch.softmax((uniqueness - uniqueness.max()) / tau, dim=0)
    return retention * (1 + p - 1 / sv.shape[0])


def frame_budgets(r: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Tokens kept per frame, LongTensor [T]: k[t] = max(1, round(min(1, r[t]) * M))."""
    M = tokens_per_frame
    return torch.round(r.clamp(max=1.0) * M).long().clamp(min=1, max=M)


def vidcom2_frame_retention(features: torch.Tensor, retention: float) -> torch.Tensor:
    """r[t] = min(1, R * (1 + p[t] - 1/T)) [T] of features [T, M, D] with VidCom²'s released knobs, in float32."""
    sv, _ = similarities(features.float())
    return frame_retention(sv, retention).clamp(max=1.0)


def stage_frame_budgets(r: torch.Tensor, retention: float, fraction: float, tokens_per_frame) -> torch.Tensor:
    """Tokens of each frame kept by a stage that keeps a share `fraction` of the video: max(1, round(fraction * M *
    r[t] / R)), at most M. r [G] (clamped, as `vidcom2_frame_retention`), tokens_per_frame M int or [G] -> [G]."""
    counts = torch.round(fraction * tokens_per_frame * r.double() / retention).long().clamp(min=1)
    return torch.minimum(counts, torch.as_tensor(tokens_per_frame, device=counts.device))


def _channel_variance(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Biased variance of each column of x [N, D], two-pass: the mean, then the squared deviations of row chunks
    (in one reused buffer), both summed over rows as [1, rows] x [rows, D] products. Equal to torch.var up to
    rounding, several times faster on CPU."""
    N = x.shape[0]
    ones = x.new_ones(1, min(chunk, N))
    mean = (x.new_ones(1, N) @ x) / N  # [1, D]
    total = torch.zeros_like(mean)
    buffer = torch.empty(min(chunk, N), x.shape[1], dtype=x.dtype, device=x.device)
    for rows in x.split(chunk):
        centred = torch.sub(rows, mean, out=buffer[: rows.shape[0]]).square_()
        total.addmm_(ones[:, : rows.shape[0]], centred)
    return total.squeeze(0) / N


def _masked_square_sums(x: torch.Tensor, mask: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """sum_d x[n, d]^2 mask[d] for x [N, D] and mask [D] -> [N], over row chunks in one reused buffer."""
    N = x.shape[0]
    out = torch.empty(N, dtype=x.dtype, device=x.device)
    buffer = torch.empty(min(chunk, N), x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, N, chunk):
        rows = x[start : start + chunk]
        squares = torch.mul(rows, rows, out=buffer[: rows.shape[0]])
        torch.mv(squares, mask, out=out[start : start + rows.shape[0]])
    return out
