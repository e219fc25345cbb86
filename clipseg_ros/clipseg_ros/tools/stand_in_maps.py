"""
Seeded probability maps that stand in for a network's output in tests and benchmarks: smooth
blobs (clean regions) or fine noise (ragged regions, holes and fragments), deterministic per
seed, so a frame's whole path after the network can be replayed and timed without a model.
"""

import cv2
import numpy as np
import torch

# Blur (in map pixels at the model's resolution) of the two mask kinds the benchmarks name.
MASK_BLUR = {'clean': 6.0, 'ragged': 1.0}


def smooth_maps(seed: int, prompt_count: int, size: int, blur: float) -> np.ndarray:
    """(N, size, size) float32 probabilities: blurred noise stretched over [0, 1]."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(prompt_count):
        noise = cv2.GaussianBlur(rng.random((size, size), np.float32), (0, 0), blur)
        maps.append((noise - noise.min()) / max(float(np.ptp(noise)), 1e-6))
    return np.stack(maps)


class SeededNetwork:
    """Stands in for an engine network's ``probabilities``: the next frame's maps, from a seed."""

    def __init__(self, seed: int = 0, blur: float = MASK_BLUR['ragged']) -> None:
        self.seed, self.blur = seed, blur
        self.calls = 0

    def probabilities(self, pixel_values: torch.Tensor, embeddings: torch.Tensor):
        self.calls += 1
        size = pixel_values.shape[-1]
        maps = [smooth_maps(self.seed + index, len(embeddings), size, self.blur)
                for index in range(len(pixel_values))]
        return torch.from_numpy(np.stack(maps))
