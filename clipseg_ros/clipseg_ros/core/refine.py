"""
Edge-aware refinement of probability maps at the frame's size: a guided filter whose guide is
the frame's colour (and, where paired, its aligned depth: a depth jump is an edge). torch, no ROS.

The filter's statistics are computed on a grid of s x s pixel cells (the fast guided filter:
He and Sun, 2015), so its cost there does not grow with the frame. At the frame's size each
probability becomes ``q = A . G + B`` with the cell coefficients A, B resized bilinearly and G the
pixel's guide. Where a prompt's coefficients A are about 0 around a cell (its map does not
follow the guide there), ``q`` is the resized ``B + A . mean(G)``, which is exactly the slab the
bilinear path already makes; only the other cells (near the prompts' borders) are computed
pixel by pixel. So the frame-size work is one bilinear resize plus the border cells, and the
memory one frame-size map more than without refinement.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import math
import numbers

import cv2
import numpy as np
import torch
from torch.nn.functional import avg_pool2d, interpolate, max_pool2d, pad


REFINE_METHODS = ('none', 'guided')
# Radius of the filter in cells: the cell size s follows from the radius asked for, up to
# MAX_CELL pixels (a larger radius then spans more cells).
CELL_RADIUS = 2
MAX_CELL = 16
# A cell whose coefficients |A| (summed over the guide's channels) stay below this around it
# takes the resized B + A . mean(G): the difference from the exact filter is about |A| times
# the guide's variation inside the cell.
FLAT_COEFFICIENT = 1e-3
_GUIDE_SLAB_ELEMENTS = 1 << 22
# Pixel values computed at once by the exact filter: bounds its temporaries for any frame.
_PATCH_ELEMENTS = 1 << 20
# Channels OpenCV's box filter takes in one image (more failed with OpenCV 5.0.0).
_OPENCV_MAX_CHANNELS = 128


@dataclass(frozen=True)
class RefineSettings:
    """
    How probability maps are refined before thresholding.

    ``method``: 'none' (bilinear only) or 'guided'. ``radius``: the filter's radius as a
    fraction of one model patch's footprint on the frame (the coarseness of the maps).
    ``epsilon``: the guide's variance below which an edge is ignored (guide in [0, 1]).
    ``depth_weight``: guide units per metre of aligned depth (0: depth not used).
    """

    method: str = 'guided'
    radius: float = 0.35
    epsilon: float = 1e-3
    depth_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in REFINE_METHODS:
            raise ValueError(f'refine must be one of {", ".join(REFINE_METHODS)}, '
                             f'got {self.method!r}')
        for name, low, high in (('radius', 0.01, 4.0), ('epsilon', 1e-6, 1.0),
                                ('depth_weight', 0.0, 100.0)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not low <= float(value) <= high):
                raise ValueError(f'refine {name} must be a number in [{low:g}, {high:g}], '
                                 f'got {value!r}')

    @property
    def enabled(self) -> bool:
        return self.method != 'none'


def check_depths(depths_m: Sequence[np.ndarray | None] | None,
                 images_rgb: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """One depth image or None per frame, each (H, W) float of its frame's size; ValueError."""
    if depths_m is None:
        return [None] * len(images_rgb)
    if len(depths_m) != len(images_rgb):
        raise ValueError(f'{len(depths_m)} depth images for {len(images_rgb)} frames')
    for depth, image in zip(depths_m, images_rgb):
        if depth is None:
            continue
        if not isinstance(depth, np.ndarray) or depth.shape != image.shape[:2] or \
                depth.dtype.kind != 'f':
            raise ValueError('a depth image must be a float array in metres of its frame\'s '
                             f'size {image.shape[1]}x{image.shape[0]}, got '
                             f'{getattr(depth, "shape", type(depth).__name__)}')
    return list(depths_m)


def patch_footprint(height: int, width: int, resolution: int, patch_size: int) -> float:
    """Mean side, in frame pixels, of one model patch: the coarseness of the maps."""
    return 0.5 * (height + width) * patch_size / resolution


def cell_size(radius_px: float) -> int:
    """Side s of the cells for a filter radius in frame pixels."""
    return min(MAX_CELL, max(1, int(round(radius_px / CELL_RADIUS))))


def box(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2 radius + 1)^2 window of each (C, h, w) map, windows cut at the edges."""
    if maps.device.type == 'cpu' and maps.dtype == torch.float32:
        return _box_opencv(maps, radius)
    side = 2 * radius + 1
    rows = avg_pool2d(maps.unsqueeze(0), (side, 1), stride=1, padding=(radius, 0),
                      count_include_pad=False)
    return avg_pool2d(rows, (1, side), stride=1, padding=(0, radius),
                      count_include_pad=False).squeeze(0)


def neighbourhood_max(maps: torch.Tensor) -> torch.Tensor:
    """The maximum over the 3 x 3 cells around each cell of (N, h, w) maps (edges: those
    inside), as shifted maxima: max pooling took ten times longer on such small grids."""
    rows = maps.clone()
    torch.maximum(rows[:, 1:], maps[:, :-1], out=rows[:, 1:])
    torch.maximum(rows[:, :-1], maps[:, 1:], out=rows[:, :-1])
    result = rows.clone()
    torch.maximum(result[:, :, 1:], rows[:, :, :-1], out=result[:, :, 1:])
    torch.maximum(result[:, :, :-1], rows[:, :, 1:], out=result[:, :, :-1])
    return result


def _window_counts(length: int, radius: int) -> np.ndarray:
    positions = np.arange(length)
    return (np.minimum(positions + radius, length - 1) - np.maximum(positions - radius, 0) + 1)


def _box_opencv(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """
    The CPU's box filter: OpenCV's running sums over channels-last planes, several times
    faster than pooling on grids of a few thousand cells (bench/refine_bench.py).
    """
    count, height, width = maps.shape
    side = 2 * radius + 1
    planes = maps.permute(1, 2, 0).contiguous().numpy()
    summed = np.empty_like(planes)
    for first in range(0, count, _OPENCV_MAX_CHANNELS):
        part = slice(first, first + _OPENCV_MAX_CHANNELS)
        summed[:, :, part] = cv2.boxFilter(
            np.ascontiguousarray(planes[:, :, part]), -1, (side, side), normalize=False,
            borderType=cv2.BORDER_CONSTANT).reshape(height, width, -1)
    pixels = np.outer(_window_counts(height, radius), _window_counts(width, radius))
    summed /= pixels[:, :, None].astype(np.float32)
    return torch.from_numpy(summed).permute(2, 0, 1).contiguous()


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
    uint8 frame (exact integer sums; twice as fast as pooling a float copy on the CPU)."""
    height, width = image.shape[:2]
    integral = cv2.integral(np.ascontiguousarray(image.numpy()))  # (H + 1, W + 1, 3) int32
    rows = np.minimum(np.arange(0, height + size, size), height)[:math.ceil(height / size) + 1]
    columns = np.minimum(np.arange(0, width + size, size), width)[:math.ceil(width / size) + 1]
    corners = integral[rows][:, columns].astype(np.float64)
    sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    pixels = np.outer(np.diff(rows), np.diff(columns))[:, :, None] * 255.0
    return torch.from_numpy((sums / pixels).astype(np.float32)).permute(2, 0, 1).contiguous()


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


def symmetric_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """
    Inverse of (C, C, h, w) symmetric positive definite matrices, one per cell: cofactors for
    C = 3, else Gauss-Jordan elimination on whole maps (C is 3 or 4: cheaper than a batched
    LAPACK call).
    """
    size = matrix.shape[0]
    if size == 3:  # the colour guide: cofactors, a third of elimination's operations
        (a, b, c), (_, d, e), (_, _, f) = matrix[0], matrix[1], matrix[2]
        first, second, third = d * f - e * e, c * e - b * f, b * e - c * d
        scale = 1.0 / (a * first + b * second + c * third)
        fourth, fifth, sixth = a * f - c * c, b * c - a * e, a * d - b * b
        rows = ((first, second, third), (second, fourth, fifth), (third, fifth, sixth))
        return torch.stack([torch.stack([value * scale for value in row]) for row in rows])
    left = [[matrix[i, j].clone() for j in range(size)] for i in range(size)]
    right = [[torch.ones_like(matrix[0, 0]) if i == j else torch.zeros_like(matrix[0, 0])
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
    return torch.stack([torch.stack(row) for row in right])


def guided_coefficients(guide: torch.Tensor, maps: torch.Tensor, radius: int,
                        epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Guided-filter coefficients of (N, h, w) maps with a (C, h, w) guide: A (N, C, h, w) and
    B (N, h, w), window means already taken, so that ``q = A . guide + B``.

    Every window mean of a step is one box filter over the stacked planes: on cell grids of a
    few thousand cells the cost is the number of calls, not their size.
    """
    channels, count = guide.shape[0], maps.shape[0]
    height, width = guide.shape[1:]
    pairs = [(i, j) for i in range(channels) for j in range(i, channels)]
    planes = torch.cat([guide, maps, (guide[None] * maps[:, None]).reshape(-1, height, width),
                        torch.stack([guide[i] * guide[j] for i, j in pairs])])
    means = box(planes, radius)
    guide_mean, map_mean = means[:channels], means[channels:channels + count]
    products = means[channels + count:channels + count + count * channels]
    covariance = products.view(count, channels, height, width) - \
        guide_mean[None] * map_mean[:, None]
    second = dict(zip(pairs, means[channels + count + count * channels:]))
    variance = torch.stack([torch.stack([
        second[min(i, j), max(i, j)] - guide_mean[i] * guide_mean[j] + (epsilon if i == j else 0.0)
        for j in range(channels)]) for i in range(channels)])
    inverse = symmetric_inverse(variance)  # one system per cell, shared by every prompt
    a = (inverse[None] * covariance[:, None]).sum(dim=2)  # (N, C, h, w)
    b = map_mean - (a * guide_mean[None]).sum(dim=1)
    smoothed = box(torch.cat([a.reshape(count * channels, height, width), b]), radius)
    return smoothed[:count * channels].view(count, channels, height, width), \
        smoothed[count * channels:]


def cell_weights(size: int, device: torch.device) -> torch.Tensor:
    """
    (s, 3) bilinear weights of a cell's s pixel rows (or columns) on the cell before, the
    cell and the one after: the sampling of ``interpolate(align_corners=False)`` at scale s.
    """
    position = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    weights = torch.zeros(size, 3, device=device)
    weights[:, 0] = (-position).clamp(min=0.0)
    weights[:, 2] = position.clamp(min=0.0)
    weights[:, 1] = 1.0 - weights[:, 0] - weights[:, 2]
    return weights


def colour_cell_ranges(image: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, h, w) lowest and highest colour, in [0, 1], over each s x s cell of a uint8 frame."""
    if image.device.type == 'cpu':
        frame = np.ascontiguousarray(image.numpy())
        kernel = np.ones((size, size), np.uint8)
        # Anchored at the kernel's corner, the pixel at a cell's corner sees the whole cell;
        # pixels past the frame's edge are left out (OpenCV's default border for both).
        ranges = [operation(frame, kernel, anchor=(0, 0))[::size, ::size].reshape(
            -(-frame.shape[0] // size), -(-frame.shape[1] // size), -1)
            for operation in (cv2.erode, cv2.dilate)]
        return tuple(torch.from_numpy(r.astype(np.float32) / 255.0).permute(2, 0, 1)
                     for r in ranges)
    planes = image.permute(2, 0, 1).to(torch.float32).unsqueeze(0) / 255.0
    return (-max_pool2d(-planes, size, stride=size, ceil_mode=True).squeeze(0),
            max_pool2d(planes, size, stride=size, ceil_mode=True).squeeze(0))


def _deciding(lowest: torch.Tensor, highest: torch.Tensor,
              threshold: float | None) -> torch.Tensor:
    """
    (N, h, w) bool: the (prompt, cell) pairs whose exact values can change a label, from the
    range of values each prompt may take on the cell. A prompt whose highest value stays below
    another's lowest is never the best (nor the confidence) there.

    Told the ``threshold``, a prompt that cannot reach it there is never labelled; one that can
    is exact where it may fall short of it, or where another prompt that can reach it may pass
    it. Elsewhere its label is settled and its confidence is the cell's filter output resized
    (as in the cells without an edge), on the same side of the threshold.
    """
    contending = highest >= lowest.amax(dim=0, keepdim=True)
    if threshold is None:
        return contending
    labellable = contending & (highest >= threshold)
    # For each prompt k, the labellable prompts whose highest reaches k's lowest (k too).
    rivals = (labellable[None] & (highest[None] >= lowest[:, None])).sum(dim=1)
    return labellable & ((lowest < threshold) | (rivals > 1))


class GuidedRefinement:
    """
    The guided filter of one frame's (N, r, r) probability maps, frame (H, W, 3) uint8 and
    optional aligned depth (H, W) metres (NaN or <= 0: no reading), all on one device.

    :attr:`cell_maps` (N, h, w) are the maps on the cells; :meth:`slab` makes the frame-size
    rows the frame-map code labels: the cell maps resized, and the pixels of the cells near the
    prompts' borders computed by the exact filter.
    """

    def __init__(self, probabilities: torch.Tensor, image: torch.Tensor,
                 depth: torch.Tensor | None, settings: RefineSettings,
                 patch_pixels: float, every_prompt: bool = True,
                 threshold: float | None = None) -> None:
        self.height, self.width = image.shape[:2]
        radius_px = settings.radius * patch_pixels
        self.size = size = cell_size(radius_px)
        cell_radius = max(1, int(round(radius_px / size)))
        # The frame as (h, s, w, s, 3) cells: where it is not a whole number of them, a copy
        # with the last row and column repeated (as the filter reads past the frame's edge).
        cells = _whole_cells(image, size)
        self._cells_view = cells.view(cells.shape[0] // size, size, cells.shape[1] // size,
                                      size, 3)
        self._depth = depth if settings.depth_weight > 0 else None
        self._depth_weight = float(settings.depth_weight)
        self._guide = guide = cell_means(image, self._depth, size, self._depth_weight)
        maps = interpolate(probabilities.to(torch.float32).unsqueeze(0), size=guide.shape[1:],
                           mode='bilinear', align_corners=False).squeeze(0)
        a, b = guided_coefficients(guide, maps, cell_radius, float(settings.epsilon))
        self.cell_maps = b + (a * guide[None]).sum(dim=1)
        # (N, h + 2, w + 2, C + 1): each cell's A and B, edge cells repeated once around.
        table = pad(torch.cat([a, b[:, None]], dim=1), (1, 1, 1, 1), mode='replicate')
        self._table = table.permute(0, 2, 3, 1).contiguous()
        self.active = self._active_cells(a)
        if not every_prompt and self._depth is None:
            lowest, highest = self._value_ranges(a, b, colour_cell_ranges(image, size))
            self.active &= _deciding(lowest, highest, threshold)
        self._weights = cell_weights(size, image.device)
        rows, columns = guide.shape[1:]
        self._row_taps = _scaled_taps(rows * size, rows, image.device)

    @staticmethod
    def _active_cells(a: torch.Tensor) -> torch.Tensor:
        """
        (N, h, w) bool: the cells whose pixels read (from the 3 x 3 cells around) coefficients
        A with |A| summed over the guide's channels above FLAT_COEFFICIENT.
        """
        strength = a.abs().sum(dim=1).unsqueeze(0)
        return neighbourhood_max(strength.squeeze(0)) > FLAT_COEFFICIENT

    def _value_ranges(self, a: torch.Tensor, b: torch.Tensor,
                      colour_ranges: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        (N, h, w) lowest and highest values a prompt may take on each cell's pixels, exact or
        not. A pixel's coefficients blend those of the 3 x 3 cells around it, each within
        their range there, and its colour lies within its cell's range: the exact ``q`` lies
        within the extremes of ``A . G + B`` over those boxes. Where not filtered pixel by
        pixel, it is a blend of those cells' own values (:attr:`cell_maps`).
        """
        coefficients = torch.cat([a, b[:, None]], dim=1)  # (N, C + 1, h, w)
        count, planes, rows, columns = coefficients.shape
        flat = coefficients.view(count * planes, rows, columns)
        high_coefficients = neighbourhood_max(flat).view(count, planes, rows, columns)
        low_coefficients = -neighbourhood_max(-flat).view(count, planes, rows, columns)
        low_colour, high_colour = (c[None] for c in colour_ranges)  # (1, 3, h, w)
        corners = torch.stack([low_coefficients[:, :-1] * low_colour,
                               low_coefficients[:, :-1] * high_colour,
                               high_coefficients[:, :-1] * low_colour,
                               high_coefficients[:, :-1] * high_colour])
        lowest = low_coefficients[:, -1] + corners.amin(dim=0).sum(dim=1)
        highest = high_coefficients[:, -1] + corners.amax(dim=0).sum(dim=1)
        return (torch.minimum(lowest, -neighbourhood_max(-self.cell_maps)),
                torch.maximum(highest, neighbourhood_max(self.cell_maps)))

    @property
    def active_cells(self) -> int:
        """How many (prompt, cell) pairs are filtered pixel by pixel."""
        return int(self.active.sum())

    def slab(self, rows: slice) -> torch.Tensor:
        """The (N, rows, W) refined probabilities of a range of frame rows."""
        size = self.size
        first, end = rows.start // size, math.ceil(rows.stop / size)
        buffer = self._resized(slice(first * size, end * size))
        count, columns = self.cell_maps.shape[0], self.cell_maps.shape[2]
        cells = buffer.view(count, end - first, size, columns, size)
        prompt, cell_row, cell_column = torch.nonzero(self.active[:, first:end], as_tuple=True)
        if prompt.numel() == 0:
            return buffer[:, rows.start - first * size:rows.stop - first * size, :self.width]
        chunk = max(1, _PATCH_ELEMENTS // (size * size * self._table.shape[-1]))
        for start in range(0, prompt.numel(), chunk):
            part = slice(start, start + chunk)
            cells[prompt[part], cell_row[part], :, cell_column[part], :] = self._exact(
                prompt[part], cell_row[part] + first, cell_column[part])
        top = rows.start - first * size
        return buffer[:, top:top + rows.stop - rows.start, :self.width]

    def _resized(self, rows: slice) -> torch.Tensor:
        """(N, rows, w s) cell maps resized bilinearly (rows of the cell-aligned frame)."""
        first, second, weight = (t[rows] for t in self._row_taps)
        weight = weight.view(1, -1, 1)
        blended = self.cell_maps[:, first] * (1.0 - weight) + self.cell_maps[:, second] * weight
        count, height, columns = blended.shape
        return interpolate(blended.view(1, count * height, columns), scale_factor=self.size,
                           mode='linear', align_corners=False).view(count, height, -1)

    def _exact(self, prompt: torch.Tensor, cell_row: torch.Tensor,
               cell_column: torch.Tensor) -> torch.Tensor:
        """(K, s, s) filter output on the pixels of K (prompt, cell) pairs."""
        near = torch.arange(3, device=prompt.device)
        block = self._table[prompt[:, None, None], (cell_row[:, None] + near)[:, :, None],
                            (cell_column[:, None] + near)[:, None, :]]  # (K, 3, 3, C + 1)
        weights = self._weights
        # (K, C + 1, s, s): rows then columns, as two small matrix products per cell.
        coefficients = weights @ block.permute(0, 3, 1, 2) @ weights.T
        # (K, s, s, 3) uint8 of the cells, then (K, 3, s, s) in [0, 1].
        guide = self._cells_view[cell_row, :, cell_column].permute(0, 3, 1, 2).to(
            torch.float32) * (1.0 / 255.0)
        if self._depth is not None:
            guide = torch.cat([guide, self._pixel_depth(cell_row, cell_column)], dim=1)
        values = coefficients[:, -1]
        for channel in range(guide.shape[1]):
            values = values.addcmul_(coefficients[:, channel], guide[:, channel])
        return values.clamp_(0.0, 1.0)

    def _pixel_indices(self, cell_row: torch.Tensor,
                       cell_column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, s, 1) rows and (K, 1, s) columns of the cells' pixels, the frame's last repeated."""
        offsets = torch.arange(self.size, device=cell_row.device)
        y = (cell_row[:, None] * self.size + offsets).clamp(max=self.height - 1)
        x = (cell_column[:, None] * self.size + offsets).clamp(max=self.width - 1)
        return y[:, :, None], x[:, None, :]

    def _pixel_depth(self, cell_row: torch.Tensor, cell_column: torch.Tensor) -> torch.Tensor:
        """(K, 1, s, s) weighted depth on the cells' pixels."""
        y, x = self._pixel_indices(cell_row, cell_column)
        metres = self._depth[y, x].to(torch.float32)
        # A missing reading takes its cell's mean: it neither makes nor hides an edge.
        cell_mean = self._guide[3][cell_row, cell_column][:, None, None]
        readable = torch.isfinite(metres) & (metres > 0)
        return torch.where(readable, self._depth_weight * metres, cell_mean).unsqueeze(1)


def _whole_cells(image: torch.Tensor, size: int) -> torch.Tensor:
    """The (H, W, 3) frame, contiguous, grown to whole s x s cells by repeating its edges."""
    height, width = image.shape[:2]
    extra_rows, extra_columns = -height % size, -width % size
    if extra_rows:
        image = torch.cat([image, image[-1:].expand(extra_rows, -1, -1)])
    if extra_columns:
        image = torch.cat([image, image[:, -1:].expand(-1, extra_columns, -1)], dim=1)
    return image.contiguous()


def _scaled_taps(out_size: int, in_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps (first, second, weight of second) of resizing in_size to out_size."""
    position = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) *
                (in_size / out_size) - 0.5).clamp(min=0.0)
    first = position.floor().to(torch.int64).clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first, second, position - first.to(torch.float32)
