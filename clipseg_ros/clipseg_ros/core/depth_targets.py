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

# Statistics of a prompt with more valid pixels than this use an even subsample of them: the
# median and percentiles of a few thousand surface points are as good as of all of them.
MAX_POINTS_PER_PROMPT = 4096
EXTENT_PERCENTILES = (5.0, 95.0)
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


def _members(labels: np.ndarray, depth: np.ndarray,
             prompt_count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """
    Flat indices of each prompt's pixels with valid depth (an even subsample when very many),
    and how many there are.
    """
    index = np.flatnonzero((labels > 0) & np.isfinite(depth))
    owner = labels[index]
    counts = np.bincount(owner, minlength=prompt_count + 1)[1:prompt_count + 1]
    order = index[np.argsort(owner, kind='stable')]
    groups = np.split(order, np.cumsum(counts)[:-1])
    return [group[::-(-group.size // MAX_POINTS_PER_PROMPT)] if group.size else group
            for group in groups], counts


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
    depth = depth_m.ravel()
    whole, whole_counts = _members(labels.ravel(), depth, prompt_count)
    inner, inner_counts = _members(interior_labels(labels, erosion_px).ravel(), depth,
                                   prompt_count)
    for prompt in range(prompt_count):
        if not whole[prompt].size:
            continue
        core, count = (inner[prompt], inner_counts[prompt]) if inner[prompt].size else \
            (whole[prompt], whole_counts[prompt])
        points = back_project(core, depth[core], camera)
        targets.centroids[prompt] = np.median(points, axis=0)
        targets.valid_pixels[prompt] = count
        points = back_project(whole[prompt], depth[whole[prompt]], camera)
        targets.extent_min[prompt], targets.extent_max[prompt] = np.percentile(
            points, EXTENT_PERCENTILES, axis=0)
    return targets


def labelled_points(labels: np.ndarray, depth_m: np.ndarray, camera: CameraModel,
                    decimation: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Every ``decimation``-th row and column's labelled pixels with valid depth, back-projected:
    (M, 3) float32 points and their (M,) uint8 labels.
    """
    step = max(1, int(decimation))
    sub_labels = labels[::step, ::step]
    sub_depth = depth_m[::step, ::step]
    rows, columns = np.nonzero((sub_labels > 0) & np.isfinite(sub_depth))
    z = sub_depth[rows, columns].astype(np.float64)
    flat = (rows * step) * camera.width + columns * step
    return back_project(flat, z, camera).astype(np.float32), sub_labels[rows, columns]
