"""Tiny deterministic synthetic clips and stills: coloured squares moving over a dark background."""

from __future__ import annotations

import numpy as np

_COLOURS = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40], [240, 240, 240], [200, 60, 220]], dtype=np.uint8
)


def _scene(rng: np.random.RandomState, height: int, width: int):
    """Random dark background plus 2-3 coloured squares: (background [H,W,3], [(colour, side, y, x, dy, dx)])."""
    background = rng.randint(0, 40, size=(1, 1, 3)) + rng.randint(0, 12, size=(height, width, 3))
    squares = []
    for colour in rng.choice(len(_COLOURS), size=rng.randint(2, 4), replace=False):
        side = rng.randint(max(2, min(height, width) // 8), max(3, min(height, width) // 3))
        y, x = rng.randint(0, height - side + 1), rng.randint(0, width - side + 1)
        dy, dx = rng.randint(-4, 5, size=2)
        squares.append((_COLOURS[colour], side, y, x, dy, dx))
    return background.astype(np.uint8), squares


def _draw(background: np.ndarray, squares, step: int) -> np.ndarray:
    frame = background.copy()
    height, width = frame.shape[:2]
    for colour, side, y, x, dy, dx in squares:
        # Bounce off the borders so squares stay in view for any number of frames.
        y0 = _bounce(y + dy * step, height - side)
        x0 = _bounce(x + dx * step, width - side)
        frame[y0 : y0 + side, x0 : x0 + side] = colour
    return frame


def _bounce(pos: int, span: int) -> int:
    if span <= 0:
        return 0
    pos %= 2 * span
    return pos if pos <= span else 2 * span - pos


def tiny_video(num_frames: int = 8, height: int = 56, width: int = 56, seed: int = 0) -> np.ndarray:
    """Deterministic clip of coloured squares moving over a dark background: uint8 [T, H, W, 3]."""
    background, squares = _scene(np.random.RandomState(seed), height, width)
    return np.stack([_draw(background, squares, t) for t in range(num_frames)])


def tiny_image(height: int = 56, width: int = 56, seed: int = 0) -> np.ndarray:
    """Deterministic still of coloured squares on a dark background: uint8 [H, W, 3]."""
    background, squares = _scene(np.random.RandomState(seed + 10_000), height, width)
    return _draw(background, squares, 0)
