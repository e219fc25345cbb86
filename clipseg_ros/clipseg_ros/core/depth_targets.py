"""
From a label image and an aligned depth image to 3D targets per prompt, in the colour camera's
optical frame (x right, y down, z forward, metres). numpy + OpenCV, no ROS.

Per prompt: a robust centroid (the per-axis median of the back-projected valid depth pixels in
the prompt's mask, eroded so that edge pixels that see the background do not pull it), the
extent (5th to 95th percentile per axis), and the count of valid depth pixels used.
"""

from dataclasses import dataclass

import cv2
import numpy as np

# Statistics of a prompt with more valid pixels than this use a random subsample of them: the
# median and percentiles of a few thousand surface points are as good as of all of them.
MAX_POINTS_PER_PROMPT = 4096
EXTENT_PERCENTILES = (5.0, 95.0)
EXTENT_FRACTIONS = tuple(p / 100.0 for p in EXTENT_PERCENTILES)
DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of the colour image the depth is registered to (pixels)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def problem(self) -> str | None:
        """Why these intrinsics cannot back-project, or None."""
        if not all(np.isfinite([self.fx, self.fy, self.cx, self.cy])):
            return 'intrinsics are not finite'
        if self.fx <= 0.0 or self.fy <= 0.0:
            return f'focal length fx={self.fx}, fy={self.fy} is not positive'
        return None


@dataclass
class PromptTargets:
    """3D results of N prompts; NaN rows where a prompt has no valid depth pixel."""

    centroids: np.ndarray      # (N, 3) float64, metres
    extent_min: np.ndarray     # (N, 3) float64, 5th percentile per axis
    extent_max: np.ndarray     # (N, 3) float64, 95th percentile per axis
    valid_pixels: np.ndarray   # (N,) int64, valid depth pixels behind each centroid

    @classmethod
    def unknown(cls, prompt_count: int) -> 'PromptTargets':
        """No depth paired with the frame: every value NaN, no pixel."""
        nan = np.full((prompt_count, 3), np.nan)
        return cls(nan, nan.copy(), nan.copy(), np.zeros(prompt_count, np.int64))


def depth_in_metres(depth: np.ndarray, encoding: str, max_depth: float) -> np.ndarray:
    """
    Return (H, W) float32 metres with NaN where there is no valid reading.

    Invalid: 0 in 16UC1 (millimetres); NaN, inf or <= 0 in 32FC1 (metres); beyond
    ``max_depth`` metres in either.
    """
    if encoding in ('16UC1', 'mono16'):
        metres = depth.astype(np.float32) * np.float32(0.001)
        metres[depth == 0] = np.nan
    elif encoding == '32FC1':
        metres = depth.astype(np.float32, copy=True)
        metres[~np.isfinite(metres) | (metres <= 0.0)] = np.nan
    else:
        raise ValueError(f"depth encoding '{encoding}' is not one of {', '.join(DEPTH_ENCODINGS)}")
    with np.errstate(invalid='ignore'):
        metres[metres > max_depth] = np.nan
    return metres


def interior_labels(labels: np.ndarray, erosion_px: int) -> np.ndarray:
    """
    ``labels`` where a pixel's whole (2e+1)-square neighbourhood has its label, else 0.

    One minimum and one maximum filter serve every prompt at once: a pixel is interior when
    both give its own label.
    """
    if erosion_px <= 0:
        return labels
    kernel = np.ones((2 * erosion_px + 1, 2 * erosion_px + 1), np.uint8)
    low = cv2.erode(labels, kernel, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(labels, kernel, borderType=cv2.BORDER_REPLICATE)
    return np.where(low == high, labels, np.uint8(0))


def back_project(flat_index: np.ndarray, z: np.ndarray, camera: CameraModel) -> np.ndarray:
    """(M,) flat pixel indices and their depths -> (M, 3) points; pixel centres at integers."""
    v, u = np.divmod(flat_index, camera.width)
    x = (u - camera.cx) * z / camera.fx
    y = (v - camera.cy) * z / camera.fy
    return np.stack([x, y, z], axis=1)


# Up to this many prompts, each prompt's pixels are found by its own compare (see _members).
FEW_PROMPTS = 8


def _members(labels: np.ndarray, depth: np.ndarray,
             prompt_count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """
    Flat indices of each prompt's pixels with valid depth (a random subsample when very many),
    and how many there are.
    """
    valid = np.isfinite(depth)
    if prompt_count <= FEW_PROMPTS:
        # One compare per prompt: cheaper than sorting every labelled pixel by its label, and
        # the same ascending indices.
        groups = [np.flatnonzero((labels == prompt) & valid)
                  for prompt in range(1, prompt_count + 1)]
        counts = np.array([len(group) for group in groups], np.int64)
        return [subsample(group) for group in groups], counts
    index = np.flatnonzero((labels > 0) & valid)
    owner = labels[index]
    counts = np.bincount(owner, minlength=prompt_count + 1)[1:prompt_count + 1]
    order = index[np.argsort(owner, kind='stable')]
    groups = np.split(order, np.cumsum(counts)[:-1])
    return [subsample(group) for group in groups], counts


# Where in its run subsample() picks: random, drawn once (a generator per call costs more than
# the rest of a small instance's statistics), so a frame always gives the same result.
_PLACES_IN_RUN = np.random.default_rng(0).random(MAX_POINTS_PER_PROMPT)


def subsample(group: np.ndarray, limit: int = MAX_POINTS_PER_PROMPT) -> np.ndarray:
    """
    At most ``limit`` (<= MAX_POINTS_PER_PROMPT) of a group's flat indices: one at a random
    place in each of as many equal runs (stratified). A plain stride in raster order would
    visit the same few columns on every row and bias the statistics on a tilted surface; a
    plain random choice would be noisier than the runs.
    """
    if group.size <= limit:
        return group
    run = group.size / limit
    offsets = (np.arange(limit) + _PLACES_IN_RUN[:limit]) * run
    return group[np.minimum(offsets.astype(np.int64), group.size - 1)]


def sample_mask(mask: np.ndarray, count: int,
                limit: int = MAX_POINTS_PER_PROMPT) -> tuple[np.ndarray, np.ndarray]:
    """
    Rows and columns of at most ``limit`` of the ``count`` pixels of a (H, W) bool mask.

    A mask of at least 4 x ``limit`` pixels is sampled on a jittered grid: one random pixel
    in every s x s cell (s^2 about count / limit), kept where it is in the mask, so that rows
    and columns are stratified alike and the cost follows the grid, not the mask; then
    :func:`subsample` takes the rest, in runs of a few cells. Alone, its runs in raster order
    would span a hundred pixels of a row at 1024 points, and their random places would move
    the mean column by a pixel or more.
    """
    if count < 4 * limit:
        return np.divmod(subsample(np.flatnonzero(mask), limit), mask.shape[1])
    height, width = mask.shape
    step = int(np.sqrt(count / limit))
    rng = np.random.default_rng(count)  # the same frame gives the same result
    tops, lefts = np.arange(0, height, step)[:, None], np.arange(0, width, step)[None, :]
    rows = tops + rng.integers(0, step, (tops.size, lefts.size))
    columns = lefts + rng.integers(0, step, (tops.size, lefts.size))
    inside = (rows < height) & (columns < width)
    rows, columns = rows[inside], columns[inside]
    kept = mask[rows, columns]
    rows, columns = rows[kept], columns[kept]
    picked = subsample(np.arange(rows.size), limit)
    return rows[picked], columns[picked]


def axis_quantiles(points: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """
    (len(fractions), 3) quantiles of (M, 3) points per axis (M > 0), interpolated as
    np.percentile's default, each from one np.partition instead of a sort.
    """
    return row_quantiles(np.ascontiguousarray(points.T), fractions)


def row_quantiles(rows: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """:func:`axis_quantiles` of (3, M) rows: x, y, z."""
    # One kth per partition of contiguous rows: numpy partitions across the rows of an (M, 3)
    # array, or at several kth at once, many times slower.
    last = rows.shape[1] - 1
    result = np.empty((len(fractions), rows.shape[0]))
    for index, fraction in enumerate(fractions):
        position = fraction * last
        low = int(np.floor(position))
        weight = position - low
        if weight == 0.0:
            result[index] = np.partition(rows, low, axis=1)[:, low]
            continue
        parted = np.partition(rows, low + 1, axis=1)
        below = parted[:, :low + 1].max(axis=1)   # the low-th smallest
        result[index] = below + (parted[:, low + 1] - below) * weight
    return result


def prompt_targets(labels: np.ndarray, depth_m: np.ndarray, camera: CameraModel,
                   prompt_count: int, erosion_px: int = 2) -> PromptTargets:
    """
    Centroid, extent and valid-pixel count of each prompt (labels 1..prompt_count).

    The centroid comes from the eroded mask (edge pixels may see the background), or from the
    whole mask where erosion leaves no valid pixel; the extent from the whole mask, whose
    percentiles already ignore a few stray pixels while erosion would shrink it.
    """
    if labels.shape != depth_m.shape or labels.shape != (camera.height, camera.width):
        raise ValueError(f'labels {labels.shape[::-1]}, depth {depth_m.shape[::-1]} and camera '
                         f'{camera.width}x{camera.height} must have one size')
    targets = PromptTargets.unknown(prompt_count)
    labels = np.ascontiguousarray(labels, np.uint8)
    # Only the box around every labelled pixel (and the erosion's reach beyond it) is read:
    # objects seldom fill the frame. Indices found in it are mapped back to the frame's, in the
    # same ascending order, so the subsamples are the frame's.
    x, y, w, h = cv2.boundingRect(labels)
    if w == 0:
        return targets
    reach = max(erosion_px, 0)
    top, left = max(y - reach, 0), max(x - reach, 0)
    bottom, right = min(y + h + reach, labels.shape[0]), min(x + w + reach, labels.shape[1])
    box_labels = labels[top:bottom, left:right]
    box_depth = np.ascontiguousarray(depth_m[top:bottom, left:right]).ravel()
    width = right - left

    def in_frame(groups: list[np.ndarray]) -> list[np.ndarray]:
        return [(group // width + top) * camera.width + group % width + left
                for group in groups]

    whole, whole_counts = _members(box_labels.ravel(), box_depth, prompt_count)
    inner, inner_counts = _members(interior_labels(box_labels, erosion_px).ravel(), box_depth,
                                   prompt_count)
    whole, inner = in_frame(whole), in_frame(inner)
    depth = depth_m.ravel()
    for prompt in range(prompt_count):
        if not whole[prompt].size:
            continue
        core, count = (inner[prompt], inner_counts[prompt]) if inner[prompt].size else \
            (whole[prompt], whole_counts[prompt])
        points = back_project(core, depth[core], camera)
        targets.centroids[prompt] = axis_quantiles(points, (0.5,))[0]
        targets.valid_pixels[prompt] = count
        points = back_project(whole[prompt], depth[whole[prompt]], camera)
        targets.extent_min[prompt], targets.extent_max[prompt] = axis_quantiles(
            points, EXTENT_FRACTIONS)
    return targets


# One back-projected pixel: x, y, z float32, the prompt's 1-based label as uint8 and its
# instance (k = the k-th instance, 0 = none) as uint16, in 16 bytes: the node's PointCloud2 layout.
POINT_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'label', 'instance'],
                        'formats': ['<f4', '<f4', '<f4', 'u1', '<u2'],
                        'offsets': [0, 4, 8, 12, 14], 'itemsize': 16})


def labelled_points(labels: np.ndarray, depth_m: np.ndarray, camera: CameraModel,
                    decimation: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Every ``decimation``-th row and column's labelled pixels with valid depth, back-projected:
    (M, 3) float32 points and their (M,) uint8 labels.
    """
    cloud = instance_points(labels, None, depth_m, camera, decimation)
    return np.stack([cloud['x'], cloud['y'], cloud['z']], axis=1), cloud['label']


def instance_points(labels: np.ndarray, instances: np.ndarray | None, depth_m: np.ndarray,
                    camera: CameraModel, decimation: int) -> np.ndarray:
    """
    (M,) POINT_DTYPE records of :func:`labelled_points`' pixels, each with its value in the
    ``instances`` image (0 where the pixel is in no instance, or ``instances`` is None).
    """
    step = max(1, int(decimation))
    sub_labels = np.ascontiguousarray(labels[::step, ::step])
    sub_depth = np.ascontiguousarray(depth_m[::step, ::step])
    # Flat indices, taken once per column: no (M, 3) array, no boolean mask applied thrice.
    kept = np.flatnonzero(((sub_labels > 0) & np.isfinite(sub_depth)).ravel())
    rows, columns = np.divmod(kept, sub_labels.shape[1])
    z = sub_depth.ravel().take(kept).astype(np.float64)
    cloud = np.zeros(len(kept), POINT_DTYPE)
    # back_project's arithmetic, in float64, stored as float32.
    cloud['x'] = (columns * step - camera.cx) * z / camera.fx
    cloud['y'] = (rows * step - camera.cy) * z / camera.fy
    cloud['z'] = z
    cloud['label'] = sub_labels.ravel().take(kept)
    if instances is not None:
        cloud['instance'] = np.ascontiguousarray(instances[::step, ::step]).ravel().take(kept)
    return cloud
