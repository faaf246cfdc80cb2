"""Pictures people look at: frame grids (reconstructions) written as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np


def recon_grid(top: np.ndarray, bottom: np.ndarray, scale: int = 2, gap: int = 2) -> np.ndarray:
    """Two rows of frames, ``top`` over ``bottom``: uint8 (N, H, W, 3) each -> one image.

    Frames are enlarged ``scale`` times (nearest neighbour, so pixels stay honest) and
    separated by white lines ``gap`` pixels wide.
    """
    if top.shape != bottom.shape:
        raise ValueError(f"rows differ: {top.shape} vs {bottom.shape}")
    n, h, w, _ = top.shape
    H, W = h * scale, w * scale
    out = np.full((2 * H + 3 * gap, n * W + (n + 1) * gap, 3), 255, np.uint8)
    for row, frames in enumerate((top, bottom)):
        for i, frame in enumerate(frames):
            big = cv2.resize(frame, (W, H), interpolation=cv2.INTER_NEAREST)
            y, x = gap + row * (H + gap), gap + i * (W + gap)
            out[y : y + H, x : x + W] = big
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    iio.imwrite(tmp, image, extension=".png")
    os.replace(tmp, path)
