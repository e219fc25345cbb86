"""
Probability maps that stand in for a network's output in tests and benchmarks, so a frame's
whole path after the network can be replayed and timed without a model: seeded smooth blobs
(clean regions) or fine noise (ragged regions, holes and fragments), deterministic per seed;
or the frame's own red, green and blue objects found by their colour (a trained model's masks
of a table scene: a few objects, a clear background).
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


# Colour maps: the prompt's channel over the larger of the other two, in [0, 1] units; the
# synthetic table's excess stays under 0.1 and its objects' is about 0.5.
COLOUR_EXCESS_FLOOR = 0.1
COLOUR_EXCESS_SPAN = 0.3


class ColourNetwork:
    """
    Stands in for an engine network's ``probabilities``: prompt k's map is how much the frame's
    colour channel k % 3 (red, green, blue) exceeds the other two, at the model's resolution.
    ``mean``, ``std`` and ``rescale_factor`` are the preprocessing's, to undo it.
    """

    def __init__(self, mean, std, rescale_factor: float = 1.0 / 255.0) -> None:
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._to_unit = 1.0 / (255.0 * rescale_factor)
        self.calls = 0

    def probabilities(self, pixel_values: torch.Tensor, embeddings: torch.Tensor):
        self.calls += 1
        # (B, 3, r, r) colour in [0, 1]
        colour = (pixel_values.to(torch.float32) * self._std + self._mean) * self._to_unit
        maps = []
        for prompt in range(len(embeddings)):
            channel = prompt % 3
            others = colour[:, [c for c in range(3) if c != channel]].amax(dim=1)
            excess = colour[:, channel] - others
            maps.append(((excess - COLOUR_EXCESS_FLOOR) / COLOUR_EXCESS_SPAN).clamp(0.0, 1.0))
        return torch.stack(maps, dim=1)


def speck_labels(count: int = 5000, height: int = 480, width: int = 640,
                 seed: int = 0) -> np.ndarray:
    """(H, W) uint8 labels: ``count`` isolated one-pixel specks of prompt 1, at random cells of
    a 4-pixel grid (a worst case for instances: every one a component of its own)."""
    rng = np.random.default_rng(seed)
    cells = rng.choice((height // 4) * (width // 4), count, replace=False)
    labels = np.zeros((height, width), np.uint8)
    labels[cells // (width // 4) * 4 + 1, cells % (width // 4) * 4 + 1] = 1
    return labels
