"""The generated scenes' exact geometry, computed on the tests' side (never by the package)."""

from clipseg_ros.core.depth_targets import CameraModel
import numpy as np


def camera_of(scene) -> CameraModel:
    """The scene's pinhole camera as the package's CameraModel."""
    i = scene.intrinsics
    return CameraModel(i.width, i.height, i.fx, i.fy, i.cx, i.cy)


def exact_surface(scene, mask: np.ndarray) -> np.ndarray:
    """The object's visible surface points from the noise-free depth, by the pinhole model."""
    rows, columns = np.nonzero(mask & (scene.depth_exact_m > 0))
    z = scene.depth_exact_m[rows, columns].astype(np.float64)
    i = scene.intrinsics
    return np.stack([(columns - i.cx) * z / i.fx, (rows - i.cy) * z / i.fy, z], axis=1)


def surface_median(scene, mask: np.ndarray) -> np.ndarray:
    """Per-axis median of the visible surface: the robust centroid's exact counterpart."""
    return np.median(exact_surface(scene, mask), axis=0)
