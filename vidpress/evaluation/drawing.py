"""`vidpress inspect`: a picture of what a press keeps — the frames, the kept tokens, the per-frame budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vidpress.types import Selection, VideoTokens


def keep_grid(tokens: VideoTokens, selection: Selection) -> np.ndarray:
    """Bool [T, h, w]: which token of each temporal group is kept."""
    t, h, w = tokens.grid
    keep = np.zeros(t * h * w, dtype=bool)
    keep[selection.keep_indices.cpu().numpy()] = True
    return keep.reshape(t, h, w)


def draw(frames: np.ndarray, tokens: VideoTokens, selection: Selection, path, title: str = "") -> Path:
    """Save a PNG: one sampled frame per temporal token group with dropped tokens dimmed and kept ones outlined,
    and a bar chart of the share of tokens each group keeps. frames: uint8 [F, H, W, 3], the sampled frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    keep = keep_grid(tokens, selection)
    T, h, w = keep.shape
    F, H, W = frames.shape[:3]
    frames_per_group = F / T
    cols = min(T, 4)
    rows = math.ceil(T / cols)
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows * H / W + 2.4))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[H / W] * rows + [1.1])
    for t in range(T):
        ax = fig.add_subplot(grid[t // cols, t % cols])
        frame = int(t * frames_per_group)
        ax.imshow(frames[frame])
        cell_h, cell_w = H / h, W / w
        for i in range(h):
            for j in range(w):
                box = (j * cell_w, i * cell_h)
                if keep[t, i, j]:
                    ax.add_patch(Rectangle(box, cell_w, cell_h, fill=False, edgecolor="yellow", linewidth=0.8))
                else:
                    ax.add_patch(Rectangle(box, cell_w, cell_h, facecolor="black", alpha=0.65, linewidth=0))
        ax.set_title(f"frame {frame}: {int(keep[t].sum())}/{h * w}", fontsize=8)
        ax.axis("off")
    bars = fig.add_subplot(grid[rows, :])
    shares = keep.reshape(T, -1).mean(1)
    bars.bar(range(T), shares, color="tab:blue")
    bars.axhline(selection.retention, color="black", linestyle="--", linewidth=1,
                 label=f"overall {selection.retention:.3f}")
    bars.set_xlabel("temporal token group")
    bars.set_ylabel("share kept")
    bars.set_xticks(range(T))
    bars.set_ylim(0, 1)
    bars.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
