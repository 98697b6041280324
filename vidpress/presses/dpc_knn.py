"""DPC-kNN clustering (density peaks with k-nearest-neighbour density), as FlashVID and HoliTom release it.

Du et al., "Study on density peaks clustering based on k-nearest neighbors and principal component analysis"
(Knowledge-Based Systems 2016); the token-merging form used here is the one in the FlashVID (arXiv 2602.08024) and
HoliTom (arXiv 2505.21334) releases. One implementation for both presses; not a press itself.
"""

from __future__ import annotations

import torch

#: The released density noise: U(0, 1) * 1e-6 is added to every density so that equal densities are ordered at random.
DENSITY_NOISE = 1e-6


def dpc_knn(x: torch.Tensor, num_centres: int, knn: int = 7, generator: torch.Generator | None = None,
            noise: float = DENSITY_NOISE, sort_centres: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of x [C, D] around `num_centres` density peaks.

    Rule (released):
      - d = pairwise Euclidean distances / sqrt(D), in float32;
      - density rho_i = exp(-mean of d^2 over the k = min(`knn`, num_centres) nearest rows, row i included)
        + U(0, 1) * `noise` (the release draws from the global RNG; vidpress from `generator`, so a seeded generator
        makes the clustering reproducible and independent of other random draws);
      - delta_i = distance to the nearest row of strictly higher density, or the largest distance of the whole matrix
        for the densest row;
      - centres = the `num_centres` largest rho * delta (ties to the lower index), in descending score order
        (FlashVID), or in index order with `sort_centres` (HoliTom);
      - every row joins its nearest centre (the first in that order on ties); a centre joins itself.

    Returns (centres LongTensor [c], assignment LongTensor [C] of positions in `centres`).
    With num_centres >= C every row is its own centre.
    """
    C, D = x.shape
    if num_centres < 1:
        raise ValueError(f"dpc_knn needs at least one centre; got num_centres={num_centres}")
    if num_centres >= C:
        return torch.arange(C, device=x.device), torch.arange(C, device=x.device)
    rows = x.float()
    dist = torch.cdist(rows[None], rows[None])[0] / D**0.5  # [C, C]
    k = min(knn, num_centres)
    nearest = torch.topk(dist, k, dim=1, largest=False).values  # includes the row itself (distance 0)
    density = torch.exp(-(nearest**2).mean(dim=1))
    if noise:
        density = density + torch.rand(C, generator=generator).to(x.device) * noise  # a CPU generator
    denser = density[None, :] > density[:, None]  # [i, j]: row j is strictly denser than row i
    delta = dist.masked_fill(~denser, float("inf")).amin(dim=1)
    delta = torch.where(denser.any(dim=1), delta, dist.max())
    score = density * delta
    centres = torch.sort(score, descending=True, stable=True).indices[:num_centres]
    if sort_centres:
        centres = centres.sort().values
    assignment = dist[:, centres].argmin(dim=1)  # torch.argmin returns the first minimum
    assignment[centres] = torch.arange(num_centres, device=x.device)
    return centres, assignment
