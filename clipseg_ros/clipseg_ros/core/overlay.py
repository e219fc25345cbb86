"""The operator overlay: each prompt's colour over its pixels and its label at the centroid."""

from collections.abc import Sequence

from clipseg_ros.core.region_stats import RegionStats
import cv2
import numpy as np


def palette(size: int = 256) -> np.ndarray:
    """Return (size, 3) uint8 distinct colours; entry 0 (background) is black."""
    hues = (np.arange(size) * 47) % 180  # a large prime step spreads neighbours apart in hue
    hsv = np.stack([hues, np.full(size, 220), np.full(size, 255)], axis=1).astype(np.uint8)
    colours = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


PALETTE = palette()
# The palette as OpenCV's lookup table for 3-channel images: one colour per label value.
_PALETTE_TABLE = np.ascontiguousarray(PALETTE.reshape(256, 1, 3))


def render_overlay(image_rgb: np.ndarray, labels: np.ndarray, stats: RegionStats,
                   names: Sequence[str], alpha: float = 0.5) -> np.ndarray:
    """Blend each prompt's colour over its pixels and write its label at the centroid."""
    # OpenCV's table lookup and masked copy: several times faster than numpy's fancy indexing
    # and masked copyto, with the same bytes.
    labels = np.ascontiguousarray(labels)
    colours = cv2.LUT(cv2.merge([labels, labels, labels]), _PALETTE_TABLE)
    blended = cv2.addWeighted(image_rgb, 1.0 - alpha, colours, alpha, 0.0)
    overlay = image_rgb.copy()
    cv2.copyTo(blended, labels, overlay)
    scale = max(0.4, min(image_rgb.shape[:2]) / 600.0)
    for index, name in enumerate(names):
        if stats.pixel_count[index] == 0:
            continue
        x, y = (int(v) for v in stats.centroids[index])
        colour = tuple(int(c) for c in PALETTE[index + 1])
        cv2.putText(overlay, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness=3, lineType=cv2.LINE_AA)
        cv2.putText(overlay, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    thickness=1, lineType=cv2.LINE_AA)
    return overlay
