"""Synthetic test frames without ROS (the engine tests use them too)."""

import numpy as np


def rgb_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic scene (gradients and a bright square), deterministic per seed."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    frame = np.stack([cols * 255 // max(width - 1, 1), rows * 255 // max(height - 1, 1),
                      np.full((height, width), rng.integers(0, 256))], axis=2).astype(np.uint8)
    frame[height // 4:height // 2, width // 4:width // 2] = (250, 30, 30)
    return frame
