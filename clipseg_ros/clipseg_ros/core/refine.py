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
memory one frame-size map more than without refinement. The cell grid's statistics are in
core/cell_statistics.py.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import math
import numbers

from clipseg_ros.core.cell_statistics import (
    cell_means, colour_cell_ranges, guided_coefficients, neighbourhood_max)
import numpy as np
import torch
from torch.nn.functional import interpolate, pad


REFINE_METHODS = ('none', 'guided')
# Radius of the filter in cells: the cell size s follows from the radius asked for, up to
# MAX_CELL pixels (a larger radius then spans more cells).
CELL_RADIUS = 2
MAX_CELL = 16
# A cell whose coefficients |A| (summed over the guide's channels) stay below this around it
# takes the resized B + A . mean(G): the difference from the exact filter is about |A| times
# the guide's variation inside the cell.
FLAT_COEFFICIENT = 1e-3
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
