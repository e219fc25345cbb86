"""
The guided filter's statistics on a grid of s x s pixel cells (core/refine.py): the cells'
colour (and depth) means and ranges, window means, the per-cell systems and their coefficients.
numpy and OpenCV on the host, torch pooling for the depth means and on CUDA; no ROS.
"""

import functools
import math

import cv2
import numpy as np
import torch
from torch.nn.functional import avg_pool2d, max_pool2d

_GUIDE_SLAB_ELEMENTS = 1 << 22
# Channels OpenCV's box filter takes in one image (more failed with OpenCV 5.0.0).
_OPENCV_MAX_CHANNELS = 128


def box(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2 radius + 1)^2 window of each (C, h, w) map, windows cut at the edges."""
    if maps.device.type == 'cpu' and maps.dtype == torch.float32:
        return _box_opencv(maps, radius)
    side = 2 * radius + 1
    rows = avg_pool2d(maps.unsqueeze(0), (side, 1), stride=1, padding=(radius, 0),
                      count_include_pad=False)
    return avg_pool2d(rows, (1, side), stride=1, padding=(0, radius),
                      count_include_pad=False).squeeze(0)


def _window_counts(length: int, radius: int) -> np.ndarray:
    positions = np.arange(length)
    return (np.minimum(positions + radius, length - 1) - np.maximum(positions - radius, 0) + 1)


def _box_opencv(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """The CPU's box filter: OpenCV's running sums, several times faster than pooling on grids
    of a few thousand cells (bench/refine_bench.py)."""
    return torch.from_numpy(np.ascontiguousarray(_window_means(maps.numpy(), radius)))


def cell_means(image: torch.Tensor, depth: torch.Tensor | None, size: int,
               depth_weight: float) -> torch.Tensor:
    """
    (C, h, w) guide means over s x s cells (the last ones partial): colour in [0, 1], then
    ``depth_weight`` x depth (metres) averaged over valid readings, cells without one filled.

    Made a slab of rows at a time, so no frame-size float copy of the image is made.
    """
    height, width = image.shape[:2]
    if depth is None and image.device.type == 'cpu' and image.dtype == torch.uint8:
        return _colour_cell_means(image, size)
    rows_per_slab = size * max(1, _GUIDE_SLAB_ELEMENTS // (size * width * 5))
    sums = []
    for top in range(0, height, rows_per_slab):
        block = image[top:top + rows_per_slab].permute(2, 0, 1).to(torch.float32)
        planes = [block]
        if depth is not None:
            metres = depth[top:top + rows_per_slab].to(torch.float32).unsqueeze(0)
            readable = torch.isfinite(metres) & (metres > 0)
            planes += [torch.where(readable, metres, 0.0), readable.to(torch.float32)]
        planes = torch.cat(planes).unsqueeze(0)
        sums.append(avg_pool2d(planes, size, stride=size, ceil_mode=True,
                               divisor_override=1).squeeze(0))
    summed = torch.cat(sums, dim=1)
    pixels = _cell_counts(height, size, image.device)[:, None] * \
        _cell_counts(width, size, image.device)[None, :]
    colour = summed[:3] / (255.0 * pixels)
    if depth is None:
        return colour
    readings = summed[4]
    mean_depth = torch.where(readings > 0, summed[3] / readings.clamp(min=1.0), 0.0)
    return torch.cat([colour, depth_weight * _fill_empty(mean_depth, readings > 0)[None]])


def _colour_cell_means(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, h, w) colour means in [0, 1] over s x s cells from OpenCV's integral image of the
    uint8 frame (exact integer sums; twice as fast as pooling a float copy on the CPU), a slab
    of whole cell rows at a time: a whole frame's int32 integral would be 4 bytes a pixel more."""
    frame = np.ascontiguousarray(image.numpy())
    height, width = frame.shape[:2]
    columns = _cell_edges(width, size)
    rows_per_slab = size * max(1, _GUIDE_SLAB_ELEMENTS // (size * width * 3))
    means = []
    for top in range(0, height, rows_per_slab):
        slab = frame[top:top + rows_per_slab]
        integral = cv2.integral(slab)  # (rows + 1, W + 1, 3) int32
        rows = _cell_edges(slab.shape[0], size)
        corners = integral[rows][:, columns].astype(np.float64)
        sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
        pixels = np.outer(np.diff(rows), np.diff(columns))[:, :, None] * 255.0
        means.append(sums / pixels)
    return torch.from_numpy(np.concatenate(means).astype(np.float32)).permute(2, 0, 1).contiguous()


def _cell_edges(length: int, size: int) -> np.ndarray:
    """The first pixel of each s-pixel cell along an axis, then the axis' end (the last cell
    may be partial)."""
    return np.minimum(np.arange(0, length + size, size), length)[:math.ceil(length / size) + 1]


def _cell_counts(length: int, size: int, device: torch.device) -> torch.Tensor:
    counts = torch.full((math.ceil(length / size),), float(size), device=device)
    counts[-1] = length - size * (counts.numel() - 1)
    return counts


def _fill_empty(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Cells without a reading take their neighbours' mean (a few passes), else the mean."""
    for _ in range(4):
        if bool(known.all()):
            return values
        weights = box(known.to(values.dtype)[None], 1)[0]
        spread = box((values * known)[None], 1)[0]
        grow = ~known & (weights > 0)
        values = torch.where(grow, spread / weights.clamp(min=1e-12), values)
        known = known | grow
    fallback = values[known].mean() if bool(known.any()) else values.new_tensor(0.0)
    return torch.where(known, values, fallback)


@functools.lru_cache(maxsize=4)
def upper_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each entry on or above the diagonal of a size x size matrix, row by
    row (kept, read only)."""
    rows, columns = np.triu_indices(size)
    rows.flags.writeable = columns.flags.writeable = False
    return rows, columns


def symmetric_inverse(upper: np.ndarray, size: int) -> np.ndarray:
    """
    Inverse (C, C, h, w) of symmetric positive definite matrices, one per cell, given by their
    (C (C + 1) / 2, h, w) entries on and above the diagonal (:func:`upper_pairs`' order):
    cofactors for C = 3, else Gauss-Jordan elimination on whole maps (C is 3 or 4: cheaper
    than a batched LAPACK call).
    """
    if size == 3:  # the colour guide: cofactors, a third of elimination's operations
        a, b, c, d, e, f = upper
        first, second, third = d * f - e * e, c * e - b * f, b * e - c * d
        scale = 1.0 / (a * first + b * second + c * third)
        fourth, fifth, sixth = a * f - c * c, b * c - a * e, a * d - b * b
        return np.stack([first, second, third, second, fourth, fifth, third, fifth,
                         sixth]).reshape((3, 3) + upper.shape[1:]) * scale
    entry = {pair: plane for pair, plane in zip(zip(*upper_pairs(size)), upper)}
    left = [[entry[min(i, j), max(i, j)].copy() for j in range(size)] for i in range(size)]
    right = [[np.ones_like(upper[0]) if i == j else np.zeros_like(upper[0])
              for j in range(size)] for i in range(size)]
    for pivot in range(size):
        scale = 1.0 / left[pivot][pivot]
        left[pivot] = [value * scale for value in left[pivot]]
        right[pivot] = [value * scale for value in right[pivot]]
        for row in range(size):
            if row == pivot:
                continue
            factor = left[row][pivot]
            left[row] = [value - factor * p for value, p in zip(left[row], left[pivot])]
            right[row] = [value - factor * p for value, p in zip(right[row], right[pivot])]
    return np.stack([np.stack(row) for row in right])


@functools.lru_cache(maxsize=32)
def _window_pixels(height: int, width: int, radius: int) -> np.ndarray:
    """(h, w, 1) float32 pixel count of each window cut at the edges (kept, read only)."""
    counts = np.outer(_window_counts(height, radius), _window_counts(width, radius))
    counts = counts[:, :, None].astype(np.float32)
    counts.flags.writeable = False
    return counts


def _window_means(planes: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)^2 window (cut at the edges) of each (P, h, w) plane:
    OpenCV's running sums over the planes as channels."""
    count, height, width = planes.shape
    side = 2 * radius + 1
    summed = np.empty((height, width, count), np.float32)
    for first in range(0, count, _OPENCV_MAX_CHANNELS):
        part = slice(first, first + _OPENCV_MAX_CHANNELS)
        summed[:, :, part] = cv2.boxFilter(
            np.ascontiguousarray(planes[part].transpose(1, 2, 0)), -1, (side, side),
            normalize=False, borderType=cv2.BORDER_CONSTANT).reshape(height, width, -1)
    summed /= _window_pixels(height, width, radius)
    return summed.transpose(2, 0, 1)


def guided_coefficients(guide: np.ndarray, maps: np.ndarray, radius: int,
                        epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """
    Guided-filter coefficients of (N, h, w) float32 maps with a (C, h, w) float32 guide:
    A (N, C, h, w) and B (N, h, w), window means already taken, so that ``q = A . guide + B``.

    numpy and OpenCV on the host, whatever the device: on cell grids of a few thousand cells
    the cost is the number of calls, which numpy's are several times cheaper than torch's, and
    every window mean of a step is one box filter over the stacked planes.
    """
    channels, count = guide.shape[0], maps.shape[0]
    height, width = guide.shape[1:]
    first, second = upper_pairs(channels)
    planes = np.concatenate([guide, maps,
                             (guide[None] * maps[:, None]).reshape(-1, height, width),
                             guide[first] * guide[second]])
    means = _window_means(planes, radius)
    guide_mean, map_mean = means[:channels], means[channels:channels + count]
    products = means[channels + count:channels + count + count * channels]
    covariance = products.reshape(count, channels, height, width) - \
        guide_mean[None] * map_mean[:, None]
    variance = means[channels + count + count * channels:] - \
        guide_mean[first] * guide_mean[second]
    variance[first == second] += epsilon
    inverse = symmetric_inverse(variance, channels)  # one system per cell, for every prompt
    a = (inverse[None] * covariance[:, None]).sum(axis=2)  # (N, C, h, w)
    b = map_mean - (a * guide_mean[None]).sum(axis=1)
    smoothed = _window_means(np.concatenate([a.reshape(count * channels, height, width), b]),
                             radius)
    return (np.ascontiguousarray(smoothed[:count * channels]).reshape(
                count, channels, height, width),
            np.ascontiguousarray(smoothed[count * channels:]))


def colour_cell_ranges(image: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) uint8 lowest and highest colour over each s x s cell of a uint8 frame, on the
    host."""
    if image.device.type == 'cpu':
        frame = np.ascontiguousarray(image.numpy())
        kernel = np.ones((size, size), np.uint8)
        # Anchored at the kernel's corner, the pixel at a cell's corner sees the whole cell;
        # pixels past the frame's edge are left out (OpenCV's default border for both).
        return tuple(operation(frame, kernel, anchor=(0, 0))[::size, ::size].reshape(
            -(-frame.shape[0] // size), -(-frame.shape[1] // size), -1)
            for operation in (cv2.erode, cv2.dilate))
    planes = image.permute(2, 0, 1).to(torch.float32).unsqueeze(0)
    return tuple(ranges.squeeze(0).permute(1, 2, 0).to(torch.uint8).cpu().numpy() for ranges in
                 (-max_pool2d(-planes, size, stride=size, ceil_mode=True),
                  max_pool2d(planes, size, stride=size, ceil_mode=True)))
