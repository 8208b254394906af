"""The default toy task: dark noisy images with blobs; the target marks the bright ones.

Each image holds a few Gaussian blobs of random brightness; only blobs at least
BRIGHT_THRESHOLD bright are drawn into the heatmap, so the model has to judge
brightness over a neighbourhood rather than copy pixels. Pure numpy, seeded.

``drift`` moves the distribution the way a real feed changes over time (0: the
original task; one unit is about a week of the local stack's feed): first the
camera's gain rises by up to GAIN_SHIFT (a sensor change: dim spots look bright,
so a model trained before it marks them and does worse), then the spots grow by
GROWTH_PER_UNIT a unit. Labels keep their meaning: a spot counts when it is
bright before the gain.
"""

from __future__ import annotations

import numpy as np

BRIGHT_THRESHOLD = 0.7
MAX_BLOBS = 4
GAIN_SHIFT = 0.3
GROWTH_PER_UNIT = 0.8


def gain_and_growth(drift: float) -> tuple[float, float]:
    """The image gain and the spot size factor at ``drift`` (see the module's docstring)."""
    return 1.0 + GAIN_SHIFT * min(max(drift, 0.0), 1.0), 1.0 + GROWTH_PER_UNIT * max(drift - 1.0, 0.0)


def _blob(size: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2)).astype(np.float32)


def make_example(rng: np.random.Generator, image_size: int, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 image [S, S, 3], float32 heatmap [S, S] in [0, 1]) pair, from the distribution at ``drift``."""
    size = image_size
    gain, growth = gain_and_growth(drift)
    image = rng.uniform(0.0, 0.25, size=(size, size, 3)).astype(np.float32)
    image += rng.uniform(0.0, 0.1, size=(1, 1, 3)).astype(np.float32)  # background tint
    heatmap = np.zeros((size, size), np.float32)
    num_blobs = int(rng.integers(1, MAX_BLOBS + 1))
    # At least one blob of each kind is likely, never guaranteed: empty heatmaps are valid.
    for _ in range(num_blobs):
        brightness = float(rng.uniform(0.3, 1.0))
        sigma = float(rng.uniform(1.8, 3.5)) * growth * size / 32.0
        cy, cx = rng.uniform(2, size - 2, size=2)
        blob = _blob(size, cy, cx, sigma)
        tint = rng.uniform(0.75, 1.0, size=3).astype(np.float32)
        image = np.maximum(image, blob[..., None] * brightness * tint)
        if brightness >= BRIGHT_THRESHOLD:
            heatmap = np.maximum(heatmap, blob)
    pixels = np.clip(np.round(image * gain * 255.0), 0, 255).astype(np.uint8)
    return pixels, heatmap


def make_examples(num_examples: int, image_size: int, seed: int,
                  drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`num_examples` pairs stacked: uint8 [N, S, S, 3] and float32 [N, S, S]; same seed and drift, same data."""
    rng = np.random.default_rng(seed)
    pairs = [make_example(rng, image_size, drift) for _ in range(num_examples)]
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, image_size, image_size, 3), np.uint8)
    heatmaps = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, image_size, image_size), np.float32)
    return images, heatmaps
