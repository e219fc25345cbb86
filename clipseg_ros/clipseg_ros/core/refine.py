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
    side = 2 * radius + 1
    rows = avg_pool2d(maps.unsqueeze(0), (side, 1), stride=1, padding=(radius, 0),
                      count_include_pad=False)
    return avg_pool2d(rows, (1, side), stride=1, padding=(0, radius),
                      count_include_pad=False).squeeze(0)


def cell_means(image: torch.Tensor, depth: torch.Tensor | None, size: int,
               depth_weight: float) -> torch.Tensor:
    """
    (C, h, w) guide means over s x s cells (the last ones partial): colour in [0, 1], then
    ``depth_weight`` x depth (metres) averaged over valid readings, cells without one filled.

    Made a slab of rows at a time, so no frame-size float copy of the image is made.
    """
    height, width = image.shape[:2]
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
    Inverse of (C, C, h, w) symmetric positive definite matrices, one per cell, by
    Gauss-Jordan elimination on whole maps (C is 3 or 4: cheaper than a batched LAPACK call).
    """
    size = matrix.shape[0]
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
    """
    channels, count = guide.shape[0], maps.shape[0]
    height, width = guide.shape[1:]
    guide_mean, map_mean = box(guide, radius), box(maps, radius)
    products = (guide[None] * maps[:, None]).reshape(count * channels, height, width)
    covariance = box(products, radius).view(count, channels, height, width) - \
        guide_mean[None] * map_mean[:, None]
    outer = (guide[:, None] * guide[None]).reshape(channels * channels, height, width)
    variance = box(outer, radius).view(channels, channels, height, width) - \
        guide_mean[:, None] * guide_mean[None]
    variance = variance + epsilon * torch.eye(channels, device=guide.device)[:, :, None, None]
    inverse = symmetric_inverse(variance)  # one system per cell, shared by every prompt
    a = (inverse[None] * covariance[:, None]).sum(dim=2)  # (N, C, h, w)
    b = map_mean - (a * guide_mean[None]).sum(dim=1)
    a = box(a.reshape(count * channels, height, width), radius).view(count, channels, height,
                                                                     width)
    return a, box(b, radius)


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
                 patch_pixels: float, every_prompt: bool = True) -> None:
        self.height, self.width = image.shape[:2]
        radius_px = settings.radius * patch_pixels
        self.size = size = cell_size(radius_px)
        cell_radius = max(1, int(round(radius_px / size)))
        self._image = image
        # The frame as (h, s, w, s, 3) cells, where it is a whole number of them.
        self._cells_view = (
            image.view(self.height // size, size, self.width // size, size, 3)
            if self.height % size == 0 and self.width % size == 0 and image.is_contiguous()
            else None)
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
            self.active &= self._contending(a, b)
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
        return max_pool2d(strength, 3, stride=1, padding=1).squeeze(0) > FLAT_COEFFICIENT

    @staticmethod
    def _contending(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """
        (N, h, w) bool: the prompts that may be the most probable somewhere in a cell. With
        the colour guide in [0, 1], ``q`` lies between B plus the negative and B plus the
        positive parts of A, over the 3 x 3 cells a pixel reads; a prompt whose highest value
        stays below another's lowest is never the best (nor the confidence) there.
        """
        highest = max_pool2d((b + a.clamp(min=0.0).sum(dim=1)).unsqueeze(0), 3, stride=1,
                             padding=1).squeeze(0)
        lowest = -max_pool2d((-b - a.clamp(max=0.0).sum(dim=1)).unsqueeze(0), 3, stride=1,
                             padding=1).squeeze(0)
        return highest >= lowest.amax(dim=0, keepdim=True)

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
        # The slab's colour as (cell rows, w, 3, s, s), where the frame is whole cells.
        colour = None if self._cells_view is None else \
            self._cells_view[first:end].permute(0, 2, 4, 1, 3).to(torch.float32)
        chunk = max(1, _PATCH_ELEMENTS // (size * size * self._table.shape[-1]))
        for start in range(0, prompt.numel(), chunk):
            part = slice(start, start + chunk)
            cells[prompt[part], cell_row[part], :, cell_column[part], :] = self._exact(
                prompt[part], cell_row[part], cell_column[part], first, colour)
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

    def _exact(self, prompt: torch.Tensor, slab_row: torch.Tensor, cell_column: torch.Tensor,
               first: int, colour: torch.Tensor | None) -> torch.Tensor:
        """(K, s, s) filter output on the pixels of K (prompt, cell) pairs of a slab."""
        cell_row = slab_row + first
        near = torch.arange(3, device=prompt.device)
        block = self._table[prompt[:, None, None], (cell_row[:, None] + near)[:, :, None],
                            (cell_column[:, None] + near)[:, None, :]]  # (K, 3, 3, C + 1)
        weights = self._weights
        # (K, C + 1, s, s): rows then columns, as two small matrix products per cell.
        coefficients = weights @ block.permute(0, 3, 1, 2) @ weights.T
        guide = self._pixel_guide(cell_row, cell_column) if colour is None else \
            colour[slab_row, cell_column] * (1.0 / 255.0)  # (K, C, s, s)
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

    def _pixel_guide(self, cell_row: torch.Tensor, cell_column: torch.Tensor) -> torch.Tensor:
        """(K, 3, s, s) colour on the cells' pixels, for frames that are not whole cells."""
        y, x = self._pixel_indices(cell_row, cell_column)
        return self._image[y, x].permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)

    def _pixel_depth(self, cell_row: torch.Tensor, cell_column: torch.Tensor) -> torch.Tensor:
        """(K, 1, s, s) weighted depth on the cells' pixels."""
        y, x = self._pixel_indices(cell_row, cell_column)
        metres = self._depth[y, x].to(torch.float32)
        # A missing reading takes its cell's mean: it neither makes nor hides an edge.
        cell_mean = self._guide[3][cell_row, cell_column][:, None, None]
        readable = torch.isfinite(metres) & (metres > 0)
        return torch.where(readable, self._depth_weight * metres, cell_mean).unsqueeze(1)


def _scaled_taps(out_size: int, in_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps (first, second, weight of second) of resizing in_size to out_size."""
    position = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) *
                (in_size / out_size) - 0.5).clamp(min=0.0)
    first = position.floor().to(torch.int64).clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first, second, position - first.to(torch.float32)
