"""
Objects in a label image: each prompt's region split into instances, one per object, with a
score, a 2D box and centroid and, with aligned depth, the same robust 3D centroid and extent as
:func:`prompt_targets` gives a whole prompt. numpy + OpenCV, no ROS.

A prompt's region is split into its connected components (8-connected); components smaller
than ``min_pixels`` are specks and dropped. With depth, a component is split further where its
depth jumps by more than ``depth_gap`` metres between 4-neighbours (two mugs that touch in the
image but stand apart): the pixels on the far side of every jump are cut out, the rest of the
eroded component is split into 4-connected parts, and every pixel not in a large part (the cut
pixels, pixels without depth, the eroded rim, small fragments) joins the nearest large part.
Eroding first keeps a thin rim of mask that spills onto the table behind an object from
becoming an object of its own.

Score: the mean of the prompt's probability over the instance's pixels. It does not grow with
size (a large, weak false positive ranks below a small confident object), every pixel counts
(one bright pixel does not make an instance confident, as the maximum would), and it costs one
masked mean. Within a prompt's region the confidence image is that prompt's probability,
as each pixel carries the label of its most probable prompt.
"""

from dataclasses import dataclass

from clipseg_ros.core.depth_targets import (
    CameraModel, EXTENT_FRACTIONS, PromptTargets, row_quantiles, sample_mask)
from clipseg_ros.core.region_stats import region_stats, value_counts
import cv2
import numpy as np

# The instance image is uint16: index 0 means none.
MAX_INSTANCES = np.iinfo(np.uint16).max
# The 3D statistics of an instance with more valid depth pixels use a stratified sample of this
# many (a per-prompt region uses MAX_POINTS_PER_PROMPT): half the cost, and within the depth
# noise of the statistics of all points (see docs/depth.md).
MAX_POINTS_PER_INSTANCE = 2048
# A region with at most this many components finds each one by comparison (see
# _large_components).
FEW_COMPONENTS = 8
# A region with more components than this is mostly specks: their areas come from one histogram
# of the labels, and OpenCV's statistics (a second labelling) only when more than
# FEW_COMPONENTS of them are large.
SPECKLED_COMPONENTS = 256
# A prompt with more large components than this ranks them by their own score first and splits
# and measures only the best max_per_prompt: a label image full of noise costs no more than that.
MANY_COMPONENTS = 64
CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True)
class InstanceSettings:
    """How a prompt's region is split into instances."""

    min_pixels: int = 50          # smaller components are specks, dropped
    depth_gap: float = 0.05       # metres; a depth jump larger than this splits; 0 = never
    max_per_prompt: int = 10      # the best-scoring ones are kept
    erosion_px: int = 2           # as for prompt_targets: edge pixels may see the background


@dataclass
class Instances:
    """
    K instances of one frame, ordered by prompt, then by score (best first).

    ``image`` is (H, W) uint16: 0 = no instance, k = ``k - 1``-th instance. ``targets`` has one
    row per instance (NaN without depth).
    """

    prompt_index: np.ndarray   # (K,) int64, 0-based prompt
    score: np.ndarray          # (K,) float32, mean probability over the instance's pixels
    pixel_count: np.ndarray    # (K,) int64
    boxes: np.ndarray          # (K, 4) int64: x_offset, y_offset, width, height
    centroids: np.ndarray      # (K, 2) float64: x (column), y (row)
    targets: PromptTargets
    image: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_index)


@dataclass
class _Candidate:
    """A part of a prompt's region, scored, not yet cut out: ``labels[...] == value``."""

    prompt: int
    score: float
    count: int
    top: int                      # where ``labels`` lies in the image
    left: int
    labels: np.ndarray            # a box of a label image
    value: int
    pixels: np.ndarray | None = None


@dataclass
class _Part:
    prompt: int
    score: float
    count: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    window: tuple[slice, slice]   # where ``pixels`` lies in the image
    pixels: np.ndarray            # bool mask inside the window


def _depth_cut(region: np.ndarray, depth: np.ndarray, gap: float,
               erosion_px: int) -> np.ndarray:
    """
    The pixels of ``region`` (bool) that may seed parts: valid depth, not on the eroded rim,
    not farther than ``gap`` beyond a valid 4-neighbour (the far side of a depth jump).
    """
    valid = region & np.isfinite(depth)
    if erosion_px > 0:
        kernel = np.ones((2 * erosion_px + 1, 2 * erosion_px + 1), np.uint8)
        valid &= cv2.erode(region.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT,
                           borderValue=0).view(bool)
    # The nearest valid 4-neighbour (or the pixel itself) in one minimum filter.
    near = np.where(valid, depth, np.float32(np.inf)).astype(np.float32, copy=False)
    nearest = cv2.erode(near, CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
    with np.errstate(invalid='ignore'):
        return valid & ~(near - nearest > gap)


def _split_by_depth(component: np.ndarray, depth: np.ndarray,
                    settings: InstanceSettings) -> np.ndarray | None:
    """
    A component's (bool) owner image after splitting at depth jumps: 0 outside it, k in its
    k-th part; None when it does not split.
    """
    seeds = _depth_cut(component, depth, settings.depth_gap, settings.erosion_px)
    count, parts = cv2.connectedComponents(seeds.view(np.uint8), connectivity=4)
    if count < 3:  # one seed or none: nothing to split (the common case, so no statistics)
        return None
    large = np.flatnonzero(_component_areas(parts, count)[1:] >= settings.min_pixels) + 1
    if len(large) < 2:
        return None
    keep = np.zeros(count, np.int32)
    keep[large] = np.arange(1, len(large) + 1)
    seed_ids = keep[parts]
    # Every other pixel of the component joins the nearest seed pixel's part. Each seed pixel
    # is its own nearest (labels numbered in raster order), so one lookup serves all pixels.
    _, nearest = cv2.distanceTransformWithLabels(
        (seed_ids == 0).view(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    seeded = seed_ids > 0
    seed_of_label = np.zeros(int(nearest.max()) + 1, np.int32)
    seed_of_label[nearest[seeded]] = seed_ids[seeded]
    return seed_of_label[nearest] * component


def _component_areas(components: np.ndarray, count: int) -> np.ndarray:
    """The pixel count of each label 0..count-1 of an int32 label image, in one pass."""
    if count <= np.iinfo(np.uint16).max + 1:  # every label fits 16 bits: OpenCV's histogram
        components = components.astype(np.uint16)
    return value_counts(components, count)


def _boxed(components: np.ndarray, values, areas: np.ndarray | None,
           min_pixels: int) -> np.ndarray:
    """(M, 6) label, x, y, w, h, area of the components ``values`` of ``min_pixels`` or more,
    each found by comparison."""
    rows = []
    for value in values:
        mask = (components == value).view(np.uint8)
        area = cv2.countNonZero(mask) if areas is None else int(areas[value])
        if area >= min_pixels:
            rows.append((int(value), *cv2.boundingRect(mask), area))
    return np.array(rows, np.int64).reshape(-1, 6)


def _large_components(region: np.ndarray, confidence: np.ndarray,
                      settings: InstanceSettings) -> tuple[np.ndarray, np.ndarray]:
    """
    A uint8 region's 8-connected components: their label image and (M, 6) rows of label,
    x, y, w, h and area of the M components of ``min_pixels`` or more (at most
    ``max_per_prompt`` when there are more than MANY_COMPONENTS: the best scoring).
    """
    count, components = cv2.connectedComponents(region, connectivity=8)
    if count - 1 <= FEW_COMPONENTS:
        # A few components: compare and count each, several times cheaper than OpenCV's stats.
        return components, _boxed(components, range(1, count), None, settings.min_pixels)
    areas = None
    if count - 1 > SPECKLED_COMPONENTS:  # mostly specks: maybe a few large ones, compared
        areas = _component_areas(components, count)
        large = np.flatnonzero(areas[1:] >= settings.min_pixels) + 1
        if len(large) <= FEW_COMPONENTS:
            return components, _boxed(components, large, areas, settings.min_pixels)
    # Block-based labelling: the same components, their statistics about a third cheaper
    # than with OpenCV's default algorithm.
    _, components, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        region, 8, cv2.CV_32S, cv2.CCL_BBDT)
    large = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= settings.min_pixels) + 1
    if len(large) > MANY_COMPONENTS:
        sums = np.bincount(components.ravel(), weights=confidence.ravel(), minlength=count)
        scores = sums[large] / stats[large, cv2.CC_STAT_AREA]
        large = np.sort(large[np.argsort(-scores, kind='stable')[:settings.max_per_prompt]])
    return components, np.column_stack([large, stats[large, :5]]).astype(np.int64)


def _prompt_candidates(prompt: int, window: tuple[slice, slice], labels: np.ndarray,
                       confidence: np.ndarray, depth_m: np.ndarray | None,
                       settings: InstanceSettings) -> list[_Candidate]:
    """The scored parts of one prompt inside its bounding box ``window``."""
    region = (labels[window] == prompt + 1).view(np.uint8)
    sure_window = confidence[window]
    components, large = _large_components(region, sure_window, settings)
    split = depth_m is not None and settings.depth_gap > 0.0
    top, left = window[0].start, window[1].start
    found = []
    for index, x, y, w, h, area in large.tolist():
        box = (slice(y, y + h), slice(x, x + w))
        component = components[box] == index
        sure = sure_window[box]
        # Two parts of min_pixels each need twice that: a smaller component cannot split.
        splits = split and area >= 2 * settings.min_pixels
        owner = _split_by_depth(component, depth_m[window][box], settings) if splits else None
        if owner is None:
            score = cv2.mean(sure, mask=component.view(np.uint8))[0]
            found.append(_Candidate(prompt, score, area, top + y, left + x, components[box],
                                    index, component))
            continue
        pieces = int(owner.max()) + 1
        areas = np.bincount(owner.ravel(), minlength=pieces)
        sums = np.bincount(owner.ravel(), weights=sure.ravel(), minlength=pieces)
        for value in range(1, pieces):
            if areas[value] >= settings.min_pixels:
                found.append(_Candidate(prompt, float(sums[value] / areas[value]),
                                        int(areas[value]), top + y, left + x, owner, value))
    return found


def _cut_out(candidate: _Candidate) -> _Part:
    """A candidate's pixels, tight box and centroid."""
    pixels = (candidate.pixels if candidate.pixels is not None
              else candidate.labels == candidate.value).view(np.uint8)
    per_column = cv2.reduce(pixels, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    per_row = cv2.reduce(pixels, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    columns, rows = np.flatnonzero(per_column), np.flatnonzero(per_row)
    x0, x1, y0, y1 = int(columns[0]), int(columns[-1]), int(rows[0]), int(rows[-1])
    count = candidate.count
    top, left = candidate.top, candidate.left
    centroid = (left + float(per_column @ np.arange(len(per_column))) / count,
                top + float(per_row @ np.arange(len(per_row))) / count)
    return _Part(candidate.prompt, candidate.score, count,
                 (left + x0, top + y0, x1 - x0 + 1, y1 - y0 + 1), centroid,
                 (slice(top + y0, top + y1 + 1), slice(left + x0, left + x1 + 1)),
                 pixels[y0:y1 + 1, x0:x1 + 1].view(bool))


def _back_projected(depth: np.ndarray, v: np.ndarray, u: np.ndarray, corner: tuple[int, int],
                    camera: CameraModel) -> np.ndarray:
    """(3, M) x, y, z of the pixels (v, u) of a window of the image whose corner is (top, left)."""
    z = depth[v, u].astype(np.float64)
    return np.stack([(u + (corner[1] - camera.cx)) * z / camera.fx,
                     (v + (corner[0] - camera.cy)) * z / camera.fy, z])


def _part_targets(part: _Part, depth_m: np.ndarray, camera: CameraModel, erosion_px: int,
                  targets: PromptTargets, row: int) -> None:
    """
    The 3D row of one instance, as :func:`prompt_targets` computes a prompt's, in a window
    around the instance only (the image-wide erosion would cost more than all the rest).
    """
    height, width = depth_m.shape
    rows, columns = part.window
    top, left = max(rows.start - erosion_px, 0), max(columns.start - erosion_px, 0)
    bottom = min(rows.stop + erosion_px, height)
    right = min(columns.stop + erosion_px, width)
    mask = np.zeros((bottom - top, right - left), np.uint8)
    mask[rows.start - top:rows.stop - top, columns.start - left:columns.stop - left] = \
        part.pixels
    depth = depth_m[top:bottom, left:right]
    whole = mask.view(bool) & np.isfinite(depth)
    whole_count = cv2.countNonZero(whole.view(np.uint8))
    if not whole_count:
        return
    core, core_count = whole, whole_count
    if erosion_px > 0:
        kernel = np.ones((2 * erosion_px + 1, 2 * erosion_px + 1), np.uint8)
        inner = whole & cv2.erode(mask, kernel, borderType=cv2.BORDER_REPLICATE).view(bool)
        inner_count = cv2.countNonZero(inner.view(np.uint8))
        if inner_count:
            core, core_count = inner, inner_count

    # One sample of the whole part serves both: the core's points are those of it in the core
    # (all of them while the part has no more than MAX_POINTS_PER_INSTANCE valid pixels).
    v, u = sample_mask(whole, whole_count, MAX_POINTS_PER_INSTANCE)
    rows = _back_projected(depth, v, u, (top, left), camera)
    targets.extent_min[row], targets.extent_max[row] = row_quantiles(rows, EXTENT_FRACTIONS)
    targets.valid_pixels[row] = core_count
    if core is not whole:
        in_core = core[v, u]
        if in_core.any():
            v, u = v[in_core], u[in_core]
        else:  # a core too thin for the sample: its own
            v, u = sample_mask(core, core_count, MAX_POINTS_PER_INSTANCE)
        rows = _back_projected(depth, v, u, (top, left), camera)
    targets.centroids[row] = row_quantiles(rows, (0.5,))[0]


def find_instances(labels: np.ndarray, confidence: np.ndarray, prompt_count: int,
                   settings: InstanceSettings = InstanceSettings(),
                   depth_m: np.ndarray | None = None, camera: CameraModel | None = None,
                   boxes: np.ndarray | None = None) -> Instances:
    """
    The instances of prompts 1..prompt_count in ``labels`` (H, W) uint8.

    ``confidence``: (H, W) float32, the label's probability per pixel. ``depth_m``: (H, W)
    metres, NaN where invalid, registered to ``labels`` (with ``camera``), or None.
    ``boxes``: (N, 4) x, y, w, h of each prompt's pixels when already known (RegionStats).
    """
    if labels.shape != confidence.shape:
        raise ValueError(f'labels {labels.shape} and confidence {confidence.shape} differ')
    if (depth_m is None) != (camera is None):
        raise ValueError('depth_m and camera come together')
    if boxes is None:
        boxes = region_stats(labels, confidence, prompt_count).boxes
    labels = np.ascontiguousarray(labels)
    parts: list[_Part] = []
    for prompt in range(prompt_count):
        x, y, w, h = (int(v) for v in boxes[prompt])
        if w == 0 or h == 0:
            continue
        found = _prompt_candidates(prompt, (slice(y, y + h), slice(x, x + w)), labels,
                                   confidence, depth_m, settings)
        found.sort(key=lambda candidate: -candidate.score)
        parts += [_cut_out(candidate) for candidate in found[:settings.max_per_prompt]]
    parts = parts[:MAX_INSTANCES]
    image = np.zeros(labels.shape, np.uint16)
    for index, part in enumerate(parts):
        np.copyto(image[part.window], index + 1, where=part.pixels)
    count = len(parts)
    targets = PromptTargets.unknown(count)
    if depth_m is not None:
        for index, part in enumerate(parts):
            _part_targets(part, depth_m, camera, settings.erosion_px, targets, index)
    return Instances(
        prompt_index=np.array([p.prompt for p in parts], np.int64),
        score=np.array([p.score for p in parts], np.float32),
        pixel_count=np.array([p.count for p in parts], np.int64),
        boxes=np.array([p.box for p in parts], np.int64).reshape(count, 4),
        centroids=np.array([p.centroid for p in parts], np.float64).reshape(count, 2),
        targets=targets, image=image)
