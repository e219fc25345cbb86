"""
An independent torch implementation of CLIPSeg's visual prompt recipe, for the tests.

Written from the recipe's description (the reference code's ``crop_blur_highlight352``
mode, with the documented choices of :mod:`clipseg_ros.core.visual_prompt`), not from the package's
helpers: torch's interpolate, pad and conv2d do the work, and the blur kernel is built from the
Gaussian formula.

1. Resize the support image to S x S, bilinear (half-pixel centres, antialiased when either
   side shrinks, as the engine resizes query frames), rescale and normalise; resize the mask
   to S x S with torch's nearest mode. If that loses the whole object, a cell of the S x S grid
   is object when any pixel between its nearest-sampled row/column and the next cell's is.
2. Background = 0.1 x (15x15, sigma 3 Gaussian blur of the normalised image, borders
   mirrored without repeating the edge pixel); object pixels kept.
3. Crop to the object's box, each bound moved out by 10% of the box's extent along its axis,
   clipped to the image and truncated to an integer.
4. Zero-pad to a square (an odd extra row/column after the image), resize to S x S with
   torch's nearest mode.

No mask: step 1 only (the whole image, nothing darkened, as with an all-ones mask).
"""

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional

GAUSSIAN_SIDE = 15
GAUSSIAN_SIGMA = 3.0


def resize_and_normalise(image: np.ndarray, size: int, mean: Sequence[float],
                         std: Sequence[float], rescale_factor: float) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, S, S) float32, as the engine preprocesses query frames."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        pixels = functional.interpolate(pixels, size=(size, size), mode='bilinear',
                                        align_corners=False,
                                        antialias=height > size or width > size)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels * rescale_factor - mean_t) / std_t


def _nearest_sources(in_size: int, out_size: int) -> torch.Tensor:
    """Source index torch's nearest mode samples for each output index."""
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size)
    return functional.interpolate(ramp, size=out_size, mode='nearest')[0, 0].long()


def mask_on_grid(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) mask -> (S, S) bool: nearest, or the cells holding object pixels if that is empty."""
    selected = torch.from_numpy(np.asarray(mask) != 0)
    grid = functional.interpolate(selected[None, None].float(), size=(size, size),
                                  mode='nearest')[0, 0] > 0.5
    if bool(grid.any()):
        return grid
    rows = _nearest_sources(mask.shape[0], size)
    cols = _nearest_sources(mask.shape[1], size)
    object_rows, object_cols = torch.nonzero(selected, as_tuple=True)
    # The cell of a source pixel is the last one whose sample is at or before it.
    cell_rows = torch.searchsorted(rows, object_rows, right=True) - 1
    cell_cols = torch.searchsorted(cols, object_cols, right=True) - 1
    grid[cell_rows, cell_cols] = True
    return grid


def gaussian_blur(image: torch.Tensor) -> torch.Tensor:
    """15x15, sigma 3 Gaussian blur of (1, C, H, W), mirrored borders, in float64."""
    offsets = torch.arange(GAUSSIAN_SIDE, dtype=torch.float64) - GAUSSIAN_SIDE // 2
    line = torch.exp(-offsets ** 2 / (2.0 * GAUSSIAN_SIGMA ** 2))
    line = line / line.sum()
    channels = image.shape[1]
    radius = GAUSSIAN_SIDE // 2
    padded = functional.pad(image.double(), (radius,) * 4, mode='reflect')
    # The 2-D Gaussian is separable: a column pass, then a row pass.
    down = functional.conv2d(padded, line.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                             groups=channels)
    across = functional.conv2d(down, line.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                               groups=channels)
    return across.float()


def reference_visual_prompt(image: np.ndarray, mask: np.ndarray | None, size: int,
                            mean: Sequence[float], std: Sequence[float],
                            rescale_factor: float) -> torch.Tensor:
    """Return the engineered prompt as a (3, S, S) float32 tensor."""
    pixels = resize_and_normalise(image, size, mean, std, rescale_factor)
    if mask is None:
        return pixels[0]
    grid = mask_on_grid(mask, size)
    blended = torch.where(grid, pixels, 0.1 * gaussian_blur(pixels))
    rows = torch.nonzero(grid.any(dim=1))[:, 0]
    cols = torch.nonzero(grid.any(dim=0))[:, 0]
    bounds = []
    for found, limit in ((rows, size), (cols, size)):
        low, high = int(found[0]), int(found[-1]) + 1
        extent = high - low
        bounds.append((int(max(0, low - 0.1 * extent)), int(min(limit, high + 0.1 * extent))))
    (top, bottom), (left, right) = bounds
    crop = blended[:, :, top:bottom, left:right]
    height, width = crop.shape[-2:]
    side = max(height, width)
    pad_top, pad_left = (side - height) // 2, (side - width) // 2
    square = functional.pad(crop, (pad_left, side - width - pad_left,
                                   pad_top, side - height - pad_top))
    return functional.interpolate(square, size=(size, size), mode='nearest')[0]
