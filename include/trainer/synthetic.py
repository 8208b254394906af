"""The default toy task: dark noisy images with blobs; the target marks the bright ones.

Each image holds a few Gaussian blobs of random brightness; only blobs at least
BRIGHT_THRESHOLD bright are drawn into the heatmap, so the model has to judge
brightness over a neighbourhood rather than copy pixels. Pure numpy, seeded.
"""

from __future__ import annotations

import numpy as np

BRIGHT_THRESHOLD = 0.7
MAX_BLOBS = 4


def _blob(size: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2)).astype(np.float32)


def make_example(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 image [S, S, 3], float32 heatmap [S, S] in [0, 1]) pair."""
    size = image_size
    image = rng.uniform(0.0, 0.25, size=(size, size, 3)).astype(np.float32)
    image += rng.uniform(0.0, 0.1, size=(1, 1, 3)).astype(np.float32)  # background tint
    heatmap = np.zeros((size, size), np.float32)
    num_blobs = int(rng.integers(1, MAX_BLOBS + 1))
    # At least one blob of each kind is likely, never guaranteed: empty heatmaps are valid.
    for _ in range(num_blobs):
        brightness = float(rng.uniform(0.3, 1.0))
        sigma = float(rng.uniform(1.8, 3.5)) * size / 32.0
        cy, cx = rng.uniform(2, size - 2, size=2)
        blob = _blob(size, cy, cx, sigma)
        tint = rng.uniform(0.75, 1.0, size=3).astype(np.float32)
        image = np.maximum(image, blob[..., None] * brightness * tint)
        if brightness >= BRIGHT_THRESHOLD:
            heatmap = np.maximum(heatmap, blob)
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return pixels, heatmap


def make_examples(num_examples: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`num_examples` pairs stacked: uint8 [N, S, S, 3] and float32 [N, S, S]; same seed, same data."""
    rng = np.random.default_rng(seed)
    pairs = [make_example(rng, image_size) for _ in range(num_examples)]
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, image_size, image_size, 3), np.uint8)
    heatmaps = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, image_size, image_size), np.float32)
    return images, heatmaps
