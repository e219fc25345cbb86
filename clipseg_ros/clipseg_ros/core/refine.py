"""
Edge-aware refinement of probability maps at the frame's size: a guided filter whose guide is
the frame's colour (and, where paired, its aligned depth: a depth jump is an edge). The
frame-size arithmetic is torch where the maps are; the bookkeeping numpy and OpenCV on the host;
no ROS.

The filter's statistics are computed on a grid of s x s pixel cells (the fast guided filter:
He and Sun, 2015), so its cost there does not grow with the frame. At the frame's size each
probability becomes ``q = A . G + B`` with the cell coefficients A, B resized bilinearly and G the
pixel's guide: each half-cell block of pixels blends the coefficients of 2 x 2 cells. Where a
prompt's coefficients A are about 0 on those cells (its map does not follow the guide there),
``q`` is the resized ``B + A . mean(G)``, which is exactly the slab the bilinear path already
makes; only the other blocks (near the prompts' borders) are computed pixel by pixel, and, told
the threshold, only those whose values can change a label. So the frame-size work is one
bilinear resize plus the border blocks, and the memory one frame-size map more than without
refinement. The cell grid's statistics are in core/cell_statistics.py.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import functools
import math
import numbers

from clipseg_ros.core.cell_statistics import (
    cell_means, colour_cell_ranges, guided_coefficients)
from clipseg_ros.core.frame_maps import _bilinear_taps
import cv2
import numpy as np
import torch
from torch.nn.functional import interpolate


REFINE_METHODS = ('none', 'guided')
# Radius of the filter in cells: the cell size s follows from the radius asked for, up to
# MAX_CELL pixels (a larger radius then spans more cells).
CELL_RADIUS = 1
MAX_CELL = 16
# A cell whose coefficients |A| (summed over the guide's channels) stay below this around it
# takes the resized B + A . mean(G): the difference from the exact filter is about |A| times
# the guide's variation inside the cell.
FLAT_COEFFICIENT = 1e-3
# Bounds on a block's values are widened by this much per unit of the guide's coefficients.
ROUNDING_MARGIN = 1e-5
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
    radius: float = 0.5
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
    """
    Side s of the cells for a filter radius in frame pixels: even (each cell is four half-cell
    blocks, each reading the coefficients of 2 x 2 cells), 2 to MAX_CELL.
    """
    half = int(round(radius_px / (2 * CELL_RADIUS)))
    return 2 * min(MAX_CELL // 2, max(1, half))


@functools.lru_cache(maxsize=32)
def second_weights(size: int) -> np.ndarray:
    """
    (2, s / 2) bilinear weights, on the second of the two cells it blends, of the pixel rows (or
    columns) of a cell's first and of its second half: the sampling of
    ``interpolate(align_corners=False)`` at scale s. The first half blends the cell before and
    the cell; the second half the cell and the one after. Kept, read only.
    """
    offsets = (np.arange(size // 2, dtype=np.float32) + 0.5) / size
    weights = np.stack([offsets + 0.5, offsets])
    weights.flags.writeable = False
    return weights


def _deciding(lowest: np.ndarray, highest: np.ndarray, threshold: float | None) -> np.ndarray:
    """
    (N, 2h, 2w) bool: the (prompt, block) pairs whose exact values can change a label, from the
    range of values each prompt may take on the block. A prompt whose highest value stays below
    another's lowest is never the best (nor the confidence) there.

    Told the ``threshold``, a prompt that cannot reach it there is never labelled; one that can
    is exact where it may fall short of it, or where another prompt that can reach it may pass
    it. Elsewhere its label is settled and its confidence is the cell maps' filter output
    resized (as in the blocks without an edge), on the same side of the threshold.
    """
    contending = highest >= lowest.max(axis=0, keepdims=True)
    if threshold is None:
        return contending
    labellable = contending & (highest >= threshold)
    if lowest.shape[0] == 1:
        return labellable & (lowest < threshold)
    # Whether another labellable prompt's highest reaches k's lowest: the best highest of the
    # others is the best of all, or the second best where k has the best.
    reach = np.where(labellable, highest, -np.inf)
    leader = reach.argmax(axis=0)[None]
    best = np.take_along_axis(reach, leader, axis=0)
    np.put_along_axis(reach, leader, -np.inf, axis=0)
    others = np.where(np.arange(lowest.shape[0])[:, None, None] == leader,
                      reach.max(axis=0, keepdims=True), best)
    return labellable & ((lowest < threshold) | (others >= lowest))


class GuidedRefinement:
    """
    The guided filter of one frame's (N, r, r) probability maps, frame (H, W, 3) uint8 and
    optional aligned depth (H, W) metres (NaN or <= 0: no reading), all on one device.

    :attr:`cell_maps` (N, h, w) are the maps on the cells; :meth:`slab` makes the frame-size
    rows the frame-map code labels: the cell maps resized, and the pixels of the half-cell blocks
    near the prompts' borders computed by the exact filter. Which blocks those are, and each
    block's coefficients, are worked out on the host (a few thousand cells); the frame-size
    work runs where the maps are.
    """

    def __init__(self, probabilities: torch.Tensor, image: torch.Tensor,
                 depth: torch.Tensor | None, settings: RefineSettings,
                 patch_pixels: float, every_prompt: bool = True,
                 threshold: float | None = None) -> None:
        self.height, self.width = image.shape[:2]
        radius_px = settings.radius * patch_pixels
        self.size = size = cell_size(radius_px)
        self.block = block = size // 2
        cell_radius = max(1, int(round(radius_px / size)))
        # The frame as (2h, s/2, 2w, s/2, 3) blocks: where it is not a whole number of cells, a
        # copy with the last row and column repeated (as the filter reads past the frame's edge).
        cells = _whole_cells(image, size)
        self._blocks_view = cells.view(cells.shape[0] // block, block,
                                       cells.shape[1] // block, block, 3)
        self._depth = depth if settings.depth_weight > 0 else None
        self._depth_weight = float(settings.depth_weight)
        self._guide = guide = cell_means(image, self._depth, size, self._depth_weight)
        maps = interpolate(probabilities.to(torch.float32).unsqueeze(0), size=guide.shape[1:],
                           mode='bilinear', align_corners=False).squeeze(0)
        guide = guide.cpu().numpy()
        a, b = guided_coefficients(guide, maps.cpu().numpy(), cell_radius,
                                   float(settings.epsilon))
        # Clamped as the exact filter's values are: no blend of them leaves [0, 1] either.
        cell_maps = np.clip(b + (a * guide[None]).sum(axis=1), 0.0, 1.0)
        self.cell_maps = torch.from_numpy(cell_maps).to(image.device)
        count, channels, rows, columns = a.shape
        self._corners = _corner_indices(rows), _corner_indices(columns)
        self._cells, self._columns = rows * columns, columns
        # (N h w, C + 1): each cell's A and B.
        self._table = np.concatenate([a, b[:, None]], axis=1).transpose(0, 2, 3, 1).reshape(
            -1, channels + 1)
        # A block is exact where its corner cells' coefficients are not about 0.
        strength = np.abs(a).sum(axis=1)
        self.active = self._block_corners(strength, np.maximum) > FLAT_COEFFICIENT
        if not every_prompt and self._depth is None:
            lowest, highest = self._block_ranges(cell_maps, self._colour_ranges(cells))
            self.active &= _deciding(lowest, highest, threshold)

    def _block_corners(self, cells: np.ndarray, reduce) -> np.ndarray:
        """(N, 2h, 2w): ``reduce`` (np.maximum, say) of (N, h, w) cell values over each block's
        2 x 2 corner cells. (take, not fancy indexing: its result is C-ordered.)"""
        (top, bottom), (left, right) = self._corners
        pair = reduce(cells.take(top, axis=1), cells.take(bottom, axis=1))
        return reduce(pair.take(left, axis=2), pair.take(right, axis=2))

    def _corner_cells(self, prompt: np.ndarray, block_row: np.ndarray,
                      block_column: np.ndarray) -> np.ndarray:
        """(4, K) rows of :attr:`_table` of the 2 x 2 cells that K (prompt, block) pairs
        blend: the first row's two cells, then the second's."""
        (top, bottom), (left, right) = self._corners
        upper = prompt * self._cells + top[block_row] * self._columns
        lower = prompt * self._cells + bottom[block_row] * self._columns
        first, second = left[block_column], right[block_column]
        return np.stack([upper + first, upper + second, lower + first, lower + second])

    def _colour_ranges(self, cells: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """
        (2h x 2w, 3) middle and half range of each block's colour, in [0, 1], from the frame
        grown to whole cells, on the host; only the box around the blocks not flat (the others
        are not read) is measured, the rest left 0.
        """
        read = self.active.any(axis=0)
        middle = np.zeros(read.shape + (3,), np.float32)
        half_range = np.zeros_like(middle)
        rows, columns = np.flatnonzero(read.any(axis=1)), np.flatnonzero(read.any(axis=0))
        if rows.size:
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            left, right = int(columns[0]), int(columns[-1]) + 1
            block = self.block
            low, high = (r.astype(np.float32) for r in colour_cell_ranges(
                cells[top * block:bottom * block, left * block:right * block], block))
            middle[top:bottom, left:right] = (low + high) * (0.5 / 255.0)
            half_range[top:bottom, left:right] = (high - low) * (0.5 / 255.0)
        return middle.reshape(-1, 3), half_range.reshape(-1, 3)

    def _block_ranges(self, cell_maps: np.ndarray, colour: tuple[np.ndarray, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """
        (N, 2h, 2w) lowest and highest values each prompt may take on each block's pixels,
        exact or not, from the (N, h, w) cell maps and the blocks' (2h x 2w, 3) colour middles
        and half ranges.

        Where not filtered pixel by pixel, a pixel's value blends its block's 2 x 2 corner
        cells' own values (the cell maps). Exact, in the blocks not flat, it blends those
        corners' linear models ``A . G + B`` at its colour, which lies within the block's
        colour range: so it lies within the extremes of each model over that box (its value at
        the box's middle, give or take |A| . the half range).
        """
        # (C-ordered, so the flat views below write through)
        lowest, highest = (self._block_corners(cell_maps, reduce)
                           for reduce in (np.minimum, np.maximum))
        blocks_per_prompt, block_columns = lowest[0].size, lowest.shape[2]
        lowest_flat, highest_flat = lowest.reshape(-1), highest.reshape(-1)
        middle, half_range = colour
        nonflat = np.flatnonzero(self.active)
        step = max(1, _PATCH_ELEMENTS // (4 * self._table.shape[1]))
        for start in range(0, nonflat.size, step):
            index = nonflat[start:start + step]
            prompt, block = np.divmod(index, blocks_per_prompt)
            row, column = np.divmod(block, block_columns)
            # (4, K, C + 1): the 2 x 2 corner cells' A and B.
            corners = self._table[self._corner_cells(prompt, row, column)]
            centre = corners[:, :, -1].copy()
            spread = np.full(centre.shape, ROUNDING_MARGIN, np.float32)
            # The exact filter rounds otherwise than these sums: the margin widens the half
            # range, so the spread grows by it per unit of |A|, plus it.
            block_middle, block_half = middle[block], half_range[block] + ROUNDING_MARGIN
            for channel in range(3):
                centre += corners[:, :, channel] * block_middle[:, channel]
                spread += np.abs(corners[:, :, channel]) * block_half[:, channel]
            lowest_flat[index] = np.minimum(lowest_flat[index], (centre - spread).min(axis=0))
            highest_flat[index] = np.maximum(highest_flat[index],
                                             (centre + spread).max(axis=0))
        # The resized values blend the corners' in float, so may pass them by a rounding: the
        # margin covers it. The exact values are clamped to [0, 1]: so may their bounds be (a
        # bound past 1 would rank a prompt above another whose value is 1 too).
        np.clip(lowest_flat - ROUNDING_MARGIN, 0.0, 1.0, out=lowest_flat)
        np.clip(highest_flat + ROUNDING_MARGIN, 0.0, 1.0, out=highest_flat)
        return lowest, highest

    @property
    def active_cells(self) -> int:
        """How many (prompt, half-cell block) pairs are filtered pixel by pixel."""
        return int(np.count_nonzero(self.active))

    def slab(self, rows: slice) -> torch.Tensor:
        """The (N, rows, W) refined probabilities of a range of frame rows."""
        block = self.block
        first, end = rows.start // block, math.ceil(rows.stop / block)
        buffer = self._resized(slice(first * block, end * block))
        prompt, block_row, block_column = np.nonzero(self.active[:, first:end])
        top = rows.start - first * block
        if prompt.size == 0:
            return buffer[:, top:top + rows.stop - rows.start, :self.width]
        count, columns = buffer.shape[0], buffer.shape[2] // block
        blocks = buffer.view(count, end - first, block, columns, block)
        chunk = max(1, _PATCH_ELEMENTS // (block * block * (self._table.shape[-1] + 3)))
        for start in range(0, prompt.size, chunk):
            part = (prompt[start:start + chunk], block_row[start:start + chunk],
                    block_column[start:start + chunk])
            values = self._exact(part[0], part[1] + first, part[2])
            if buffer.device.type == 'cpu':  # numpy's scatter is several times torch's here
                blocks.numpy()[part[0], part[1], :, part[2], :] = values.numpy()
            else:
                prompt_at, row_at, column_at = _on(buffer.device, *part)
                blocks[prompt_at, row_at, :, column_at, :] = values
        return buffer[:, top:top + rows.stop - rows.start, :self.width]

    def _resized(self, rows: slice) -> torch.Tensor:
        """(N, rows, w s) cell maps resized bilinearly (rows of the cell-aligned frame)."""
        if self.cell_maps.device.type == 'cpu':
            return self._resized_opencv(rows)
        cell_rows = self.cell_maps.shape[1]
        first, second, weight = (t[rows] for t in _scaled_taps(
            cell_rows * self.size, cell_rows, self.cell_maps.device))
        weight = weight.view(1, -1, 1)
        blended = self.cell_maps[:, first] * (1.0 - weight) + self.cell_maps[:, second] * weight
        count, height, columns = blended.shape
        return interpolate(blended.view(1, count * height, columns), scale_factor=self.size,
                           mode='linear', align_corners=False).view(count, height, -1)

    def _resized_opencv(self, rows: slice) -> torch.Tensor:
        """
        :meth:`_resized` by OpenCV's bilinear resize, several times faster than torch's on the
        CPU. The rows' cells, one more on each side, are resized whole: at a whole scale s, a
        range of cells starting on a cell's edge samples as the whole map does, and the extra
        cell keeps the crop's own edge out of the rows asked for.
        """
        size, cell_rows = self.size, self.cell_maps.shape[1]
        first = max(0, rows.start // size - 1)
        end = min(cell_rows, -(-rows.stop // size) + 1)
        maps = self.cell_maps.numpy()[:, first:end]
        count, height, columns = maps.shape
        resized = np.empty((count, height * size, columns * size), np.float32)
        for prompt in range(count):
            cv2.resize(maps[prompt], (columns * size, height * size), dst=resized[prompt],
                       interpolation=cv2.INTER_LINEAR)
        top = rows.start - first * size
        return torch.from_numpy(resized[:, top:top + rows.stop - rows.start])

    def _exact(self, prompt: np.ndarray, block_row: np.ndarray,
               block_column: np.ndarray) -> torch.Tensor:
        """(K, b, b) filter output on the pixels of K (prompt, half-cell block) pairs."""
        device = self.cell_maps.device
        count, planes = prompt.size, self._table.shape[1]
        # (4, K, C + 1, 1): the A and B of the 2 x 2 cells each block blends.
        corners = torch.from_numpy(self._table[self._corner_cells(
            prompt, block_row, block_column)]).to(device)[..., None]
        # Each pixel row's coefficients on the block's left column and their step to the
        # right one: (K, C + 1, b) each, from the weights on the second of the 2 x 2 rows.
        weights = second_weights(self.size)
        down, right = (torch.from_numpy(weights[index % 2]).to(device).view(count, 1, -1)
                       for index in (block_row, block_column))
        left = torch.lerp(corners[0], corners[2], down)
        step = torch.lerp(corners[1], corners[3], down).sub_(left)
        # The colour's scale to [0, 1] goes on the coefficients: fewer values to scale.
        left[:, :3] *= 1.0 / 255.0
        step[:, :3] *= 1.0 / 255.0
        guide = self._pixel_guide(block_row, block_column)  # (C, K, b, b)
        # q = (A_left + x (A_right - A_left)) . G + B_left + x (B_right - B_left), x the
        # weight on the right column: the left and the step part summed over the channels.
        near = torch.addcmul(left[:, -1, :, None], guide[0], left[:, 0, :, None])
        far = torch.addcmul(step[:, -1, :, None], guide[0], step[:, 0, :, None])
        for channel in range(1, planes - 1):
            near.addcmul_(guide[channel], left[:, channel, :, None])
            far.addcmul_(guide[channel], step[:, channel, :, None])
        return near.addcmul_(far, right).clamp_(0.0, 1.0)

    def _pixel_guide(self, block_row: np.ndarray, block_column: np.ndarray) -> torch.Tensor:
        """(C, K, b, b) guide on the blocks' pixels: colour (0 to 255), then weighted depth."""
        if self._blocks_view.device.type == 'cpu':  # numpy's gather is several times torch's
            colour = torch.from_numpy(self._blocks_view.numpy()[block_row, :, block_column])
        else:
            row_at, column_at = _on(self._blocks_view.device, block_row, block_column)
            colour = self._blocks_view[row_at, :, column_at]
        planes = 3 if self._depth is None else 4
        guide = torch.empty((planes,) + colour.shape[:3], device=colour.device)
        guide[:3].copy_(colour.permute(3, 0, 1, 2))
        if self._depth is not None:
            guide[3] = self._pixel_depth(*_on(self._depth.device, block_row, block_column))
        return guide

    def _pixel_indices(self, block_row: torch.Tensor,
                       block_column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, b, 1) rows and (K, 1, b) columns of the blocks' pixels, the frame's last
        repeated."""
        offsets = torch.arange(self.block, device=block_row.device)
        y = (block_row[:, None] * self.block + offsets).clamp(max=self.height - 1)
        x = (block_column[:, None] * self.block + offsets).clamp(max=self.width - 1)
        return y[:, :, None], x[:, None, :]

    def _pixel_depth(self, block_row: torch.Tensor, block_column: torch.Tensor) -> torch.Tensor:
        """(K, b, b) weighted depth on the blocks' pixels."""
        y, x = self._pixel_indices(block_row, block_column)
        metres = self._depth[y, x].to(torch.float32)
        # A missing reading takes its cell's mean: it neither makes nor hides an edge.
        cell_mean = self._guide[3][block_row // 2, block_column // 2][:, None, None]
        readable = torch.isfinite(metres) & (metres > 0)
        return torch.where(readable, self._depth_weight * metres, cell_mean)


def _on(device: torch.device, *indices: np.ndarray) -> list[torch.Tensor]:
    """Host index arrays as tensors on a device."""
    return [torch.from_numpy(index).to(device) for index in indices]


@functools.lru_cache(maxsize=32)
def _corner_indices(cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of h cells, the first and second of the two cells each of the 2h blocks
    blends (the cell before and the cell, or the cell and the one after), edge cells repeated
    (kept, read only)."""
    first = np.arange(2 * cells) // 2 + np.arange(2 * cells) % 2 - 1
    pair = np.clip(first, 0, cells - 1), np.clip(first + 1, 0, cells - 1)
    for indices in pair:
        indices.flags.writeable = False
    return pair


def _whole_cells(image: torch.Tensor, size: int) -> torch.Tensor:
    """The (H, W, 3) frame, contiguous, grown to whole s x s cells by repeating its edges."""
    height, width = image.shape[:2]
    extra_rows, extra_columns = -height % size, -width % size
    if extra_rows:
        image = torch.cat([image, image[-1:].expand(extra_rows, -1, -1)])
    if extra_columns:
        image = torch.cat([image, image[:, -1:].expand(-1, extra_columns, -1)], dim=1)
    return image.contiguous()


@functools.lru_cache(maxsize=32)
def _scaled_taps(out_size: int, in_size: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bilinear taps of resizing in_size to out_size, the same for every frame of a size:
    kept, read only."""
    return _bilinear_taps(out_size, in_size, device)
