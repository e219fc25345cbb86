"""
The object under a pixel, for teaching by pointing: a click becomes an object mask that a
support-image prompt is made from. numpy + OpenCV, no ROS.

Sources, best first (docs/teaching.md has the measurements behind the order and the choices):

* ``instance``: the instance (of a prompt in force) that covers the pixel, as the node split it;
* ``depth_surface``: with aligned depth, the surface around the pixel, bounded by depth jumps
  (the far side of a jump is cut, as instances are split) and lifted off the supporting plane
  (the dominant plane of the depth image, fitted by RANSAC), so an object standing on a table
  does not flow into the table where its side meets it;
* ``colour_region``: otherwise, a region of similar colour grown from the pixel with OpenCV.

A region that is implausible (a few pixels, most of the frame, the supporting surface itself)
is refused with :class:`RegionRefused` and a reason.
"""

from collections.abc import Callable
from dataclasses import dataclass
import math

import cv2
import numpy as np

INSTANCE, DEPTH_SURFACE, COLOUR_REGION = 'instance', 'depth_surface', 'colour_region'
# Pixels searched around the click for a valid depth reading (sensors drop single pixels).
DEPTH_SEARCH_PX = 4
# RANSAC of the supporting plane: samples, tries, inlier distance (metres), and the share of
# the valid depth the plane must hold to count as a support.
PLANE_SAMPLES = 4000
PLANE_TRIES = 64
PLANE_INLIER_M = 0.004
PLANE_MIN_SHARE = 0.3
# A pixel this much nearer than the supporting plane stands on it (the lowest scene object is
# 12 mm high).
ABOVE_PLANE_M = 0.006
# Flood fill: how far (L, a, b; OpenCV's 8-bit Lab) a pixel may be from the seed's colour.
FLOOD_RANGE_LAB = (100, 25, 25)
# Depth jump (metres) that bounds a taught surface: smaller than instances' split, as a click
# must separate objects that touch.
TEACH_DEPTH_GAP = 0.01
CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


class RegionRefused(ValueError):
    """No plausible object under the pixel; the message says why."""


@dataclass(frozen=True)
class RegionLimits:
    """What a taught region may be."""

    min_pixels: int = 100
    max_fraction: float = 0.25    # of the frame


@dataclass
class TaughtRegion:
    """The object under a pixel: an (H, W) bool mask and the source that found it."""

    mask: np.ndarray
    method: str


def pixel_in_frame(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """The (column, row) of image coordinates ``x, y``; refused outside the frame or not finite.

    A pixel's centre is at integer coordinates, so it covers [u - 0.5, u + 0.5).
    """
    if not (math.isfinite(x) and math.isfinite(y)):
        raise RegionRefused(f'pixel ({x}, {y}) is not a finite position')
    column, row = math.floor(x + 0.5), math.floor(y + 0.5)
    if not (0 <= column < width and 0 <= row < height):
        raise RegionRefused(f'pixel ({x:g}, {y:g}) is outside the {width}x{height} frame')
    return column, row


def middle_pixel(mask: np.ndarray) -> tuple[int, int]:
    """The (column, row) of a mask farthest from its border: inside it, whatever its shape."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1,
                                                                                          1:-1]
    row, column = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(column), int(row)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its enclosed holes filled (holes: background not reaching the border)."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)
    return mask | (outside[1:-1, 1:-1] != 2)


def _component_at(mask: np.ndarray, column: int, row: int, connectivity: int = 4) -> np.ndarray:
    """The connected part of ``mask`` that holds the pixel (empty when it is not in it)."""
    if not mask[row, column]:
        return np.zeros_like(mask)
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
    return labels == labels[row, column]


# ----------------------------------------------------------------------------- instances
def instance_region(instance_image: np.ndarray, column: int, row: int) -> np.ndarray | None:
    """The instance covering the pixel in an instance image (0 = none), or None."""
    index = int(instance_image[row, column])
    return instance_image == index if index else None


# ----------------------------------------------------------------------------- depth
def valid_depth(depth_m: np.ndarray) -> np.ndarray:
    """Pixels with a reading (0 and NaN are none)."""
    with np.errstate(invalid='ignore'):
        return np.isfinite(depth_m) & (depth_m > 0)


def support_plane(depth_m: np.ndarray, valid: np.ndarray,
                  seed: int = 0) -> np.ndarray | None:
    """
    The depth of the dominant plane at every pixel, or None without one.

    A plane in the camera frame has ``1 / z`` affine in the pixel coordinates, so no intrinsics
    are needed: RANSAC fits ``1 / z = a u + b v + c`` to a sample of the valid pixels.
    """
    rows, columns = np.nonzero(valid)
    if len(rows) < 100:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(PLANE_SAMPLES, len(rows)), replace=False)
    u, v = columns[pick].astype(np.float64), rows[pick].astype(np.float64)
    z = depth_m[rows[pick], columns[pick]].astype(np.float64)
    design = np.stack([u, v, np.ones_like(u)], axis=1)
    best, best_count = None, 0
    for _ in range(PLANE_TRIES):
        three = rng.choice(len(u), size=3, replace=False)
        try:
            coefficients = np.linalg.solve(design[three], 1.0 / z[three])
        except np.linalg.LinAlgError:
            continue
        inverse = design @ coefficients
        with np.errstate(divide='ignore'):
            inliers = np.abs(1.0 / inverse - z) < PLANE_INLIER_M
        count = int(inliers.sum())
        if count > best_count:
            best, best_count = inliers, count
    if best is None or best_count < PLANE_MIN_SHARE * len(u):
        return None
    coefficients, *_ = np.linalg.lstsq(design[best], 1.0 / z[best], rcond=None)
    grid_v, grid_u = np.mgrid[0:depth_m.shape[0], 0:depth_m.shape[1]]
    inverse = coefficients[0] * grid_u + coefficients[1] * grid_v + coefficients[2]
    with np.errstate(divide='ignore'):
        return np.where(inverse > 0, 1.0 / inverse, np.inf).astype(np.float32)


def _seed_with_depth(valid: np.ndarray, column: int, row: int) -> tuple[int, int] | None:
    """The pixel itself when it has depth, else the nearest one with depth close by."""
    if valid[row, column]:
        return column, row
    top, left = max(row - DEPTH_SEARCH_PX, 0), max(column - DEPTH_SEARCH_PX, 0)
    window = valid[top:row + DEPTH_SEARCH_PX + 1, left:column + DEPTH_SEARCH_PX + 1]
    found_rows, found_columns = np.nonzero(window)
    if len(found_rows) == 0:
        return None
    nearest = np.argmin((found_rows + top - row) ** 2 + (found_columns + left - column) ** 2)
    return int(found_columns[nearest] + left), int(found_rows[nearest] + top)


def depth_surface(depth_m: np.ndarray, column: int, row: int,
                  gap: float) -> np.ndarray | None:
    """
    The surface around the pixel bounded by depth jumps of more than ``gap`` metres and lifted
    off the supporting plane; None when the pixel has no depth nearby. Refused when the pixel
    lies on the supporting plane itself.
    """
    depth = depth_m.astype(np.float32, copy=False)
    valid = valid_depth(depth)
    seed = _seed_with_depth(valid, column, row)
    if seed is None:
        return None
    surface = valid.copy()
    plane = support_plane(depth, valid)
    if plane is not None:
        with np.errstate(invalid='ignore'):
            surface &= depth < plane - ABOVE_PLANE_M
        if not surface[seed[1], seed[0]]:
            raise RegionRefused('the pixel is on the supporting surface (the table or floor), '
                                'not on an object standing on it')
    # The far side of a jump: farther than gap beyond its nearest valid 4-neighbour.
    near = np.where(surface, depth, np.float32(np.inf))
    nearest = cv2.erode(near, CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
    with np.errstate(invalid='ignore'):
        surface &= ~(near - nearest > gap)
    part = _component_at(surface, *seed)
    # Pixels without a reading inside the part or on its rim (sensors drop depth edges).
    rim = cv2.dilate(part.view(np.uint8), CROSS, iterations=2).view(bool)
    return _fill_holes(part | (rim & ~valid))


# ----------------------------------------------------------------------------- colour
def _smoothed(rgb: np.ndarray) -> np.ndarray:
    """The frame with sensor noise and fine texture smoothed, edges kept (Lab space)."""
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)
    return cv2.bilateralFilter(lab, 7, 20, 5)


def flood_fill_region(rgb: np.ndarray, column: int, row: int) -> np.ndarray:
    """
    Pixels reached from the seed whose colour stays within a fixed range of the seed's: wide
    in lightness (shading across one object's faces), narrow in the two colour axes.
    """
    image = _smoothed(rgb)
    mask = np.zeros((rgb.shape[0] + 2, rgb.shape[1] + 2), np.uint8)
    cv2.floodFill(image, mask, (column, row), 0, FLOOD_RANGE_LAB, FLOOD_RANGE_LAB,
                  4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8))
    return _fill_holes(mask[1:-1, 1:-1].astype(bool))


def watershed_region(rgb: np.ndarray, column: int, row: int, radius: int = 3) -> np.ndarray:
    """The basin of the seed against the frame's border, on the colour gradient."""
    height, width = rgb.shape[:2]
    markers = np.zeros((height, width), np.int32)
    # Two pixels wide: watershed overwrites the outermost row and column with -1.
    markers[:2, :] = markers[-2:, :] = markers[:, :2] = markers[:, -2:] = 1
    cv2.circle(markers, (column, row), radius, 2, -1)
    cv2.watershed(cv2.cvtColor(_smoothed(rgb), cv2.COLOR_LAB2BGR), markers)
    return _fill_holes(markers == 2)


def grabcut_region(rgb: np.ndarray, column: int, row: int, iterations: int = 3) -> np.ndarray:
    """GrabCut started from the flood-fill region (probable object) and its widened box."""
    start = flood_fill_region(rgb, column, row)
    rows, columns = np.nonzero(start)
    height, width = start.shape
    extent = max(rows.max() - rows.min(), columns.max() - columns.min(), 8)
    top, bottom = max(rows.min() - extent, 0), min(rows.max() + extent + 1, height)
    left, right = max(columns.min() - extent, 0), min(columns.max() + extent + 1, width)
    labels = np.full((height, width), cv2.GC_BGD, np.uint8)
    labels[top:bottom, left:right] = cv2.GC_PR_BGD
    labels[start] = cv2.GC_PR_FGD
    labels[[0, -1], :] = labels[:, [0, -1]] = cv2.GC_BGD  # some background, whatever leaked
    cv2.circle(labels, (column, row), 3, cv2.GC_FGD, -1)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), labels, None,
                background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    found = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    return _fill_holes(_component_at(found, column, row, 8))


COLOUR_METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    'flood_fill': flood_fill_region, 'watershed': watershed_region, 'grabcut': grabcut_region}
COLOUR_METHOD = 'flood_fill'


# ----------------------------------------------------------------------------- choice
def check_plausible(mask: np.ndarray, method: str, limits: RegionLimits) -> None:
    """Refuse a region of a few pixels or of most of the frame."""
    count, total = int(mask.sum()), mask.size
    if count < limits.min_pixels:
        raise RegionRefused(f'the {method} region under the pixel has {count} pixels, fewer '
                            f'than {limits.min_pixels}: click inside a larger object')
    if count > limits.max_fraction * total:
        raise RegionRefused(f'the {method} region under the pixel covers {count / total:.0%} '
                            f'of the frame (at most {limits.max_fraction:.0%}): that is the '
                            'background, not an object')


def object_under_pixel(rgb: np.ndarray, x: float, y: float, *,
                       instance_image: np.ndarray | None = None,
                       depth_m: np.ndarray | None = None,
                       depth_gap: float = TEACH_DEPTH_GAP,
                       limits: RegionLimits = RegionLimits(),
                       colour_method: str = COLOUR_METHOD) -> TaughtRegion:
    """
    The object under image position (``x`` column, ``y`` row) of an (H, W, 3) RGB frame, from
    the best source available; raises :class:`RegionRefused` with the reason otherwise.

    ``instance_image`` (H, W), 0 = none, and ``depth_m`` (H, W) metres (0 or NaN = no reading)
    must be of this frame.
    """
    height, width = rgb.shape[:2]
    column, row = pixel_in_frame(x, y, width, height)
    for name, extra in (('instance image', instance_image), ('depth image', depth_m)):
        if extra is not None and extra.shape[:2] != (height, width):
            raise RegionRefused(f'the {name} is {extra.shape[1]}x{extra.shape[0]}, '
                                f'the frame {width}x{height}')
    if instance_image is not None:
        mask = instance_region(instance_image, column, row)
        if mask is not None:
            check_plausible(mask, INSTANCE, limits)
            return TaughtRegion(mask, INSTANCE)
    if depth_m is not None:
        mask = depth_surface(depth_m, column, row, depth_gap)
        if mask is not None:
            check_plausible(mask, DEPTH_SURFACE, limits)
            return TaughtRegion(mask, DEPTH_SURFACE)
    mask = COLOUR_METHODS[colour_method](rgb, column, row)
    check_plausible(mask, COLOUR_REGION, limits)
    return TaughtRegion(mask, COLOUR_REGION)
