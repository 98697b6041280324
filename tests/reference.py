"""Straightforward per-frame-loop implementations of press rules, to check the vectorised ones against.

Written directly from the rules as they read: VidCom²'s (arXiv 2505.14454; `VidCom2Press`'s docstring) one frame at a
time, DivPrune's (arXiv 2503.02175; `DivPrunePress`'s docstring) one pick at a time on the full distance matrix.
"""

import torch
import torch.nn.functional as F


def vidcom2_loop(features, retention, tau=0.01, alphas=(0.125, 0.25, 0.5, 1.0, 2.0), channel_ratio=0.5):
    """VidCom² keep indices for features [T, M, D], frame by frame. Returns a sorted list of ints."""
    T, M, D = features.shape
    if retention >= 1.0:
        return list(range(T * M))
    flat = features.float().reshape(T * M, D)
    channels = torch.topk(flat.var(dim=0, unbiased=False), max(1, int(D * channel_ratio)), largest=False).indices
    x = F.normalize(flat[:, channels], dim=-1).view(T, M, -1)
    video_centre = x.mean(dim=(0, 1))

    def kernel(tokens, centre):
        sq = ((tokens - centre) ** 2).sum(-1)
        return sum(torch.exp(-sq / (2 * a)) for a in alphas)

    sv = [kernel(x[t], video_centre) for t in range(T)]
    uniqueness = torch.stack([-s.mean() for s in sv])
    p = torch.softmax((uniqueness - uniqueness.max()) / tau, dim=0)
    keep = []
    for t in range(T):
        r = min(1.0, retention * (1 + p[t].item() - 1 / T))
        k = max(1, min(M, round(r * M)))
        sf = kernel(x[t], x[t].mean(dim=0))
        order = torch.argsort(sv[t] + sf, stable=True)[:k]
        keep.extend((t * M + order).tolist())
    return sorted(keep)


def divprune_loop(x, budget):
    """DivPrune read literally: full distance matrix, one pick at a time. x [N, D] -> picks in order."""
    x = F.normalize(x.float(), dim=-1)
    dist = 1 - x @ x.T
    others = dist + torch.diag(torch.full((len(x),), float("inf")))
    picks = [int(torch.argmax(others.min(dim=1).values))]
    while len(picks) < budget:
        to_kept = dist[:, picks].min(dim=1).values
        to_kept[picks] = -float("inf")
        picks.append(int(torch.argmax(to_kept)))
    return picks
