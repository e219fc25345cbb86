"""Per-prompt region statistics and the operator overlay, from a label image; pure numpy + cv2."""

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


@dataclass
class RegionStats:
    """Statistics of each prompt's pixels in a label image; arrays have one entry per prompt."""

    pixel_count: np.ndarray       # (N,) int64
    boxes: np.ndarray             # (N, 4) int64: x_offset, y_offset, width, height (0s if empty)
    centroids: np.ndarray         # (N, 2) float64: x (column), y (row); 0 if empty
    mean_confidence: np.ndarray   # (N,) float32; 0 if empty


def region_stats(labels: np.ndarray, confidence: np.ndarray, prompt_count: int) -> RegionStats:
    """Compute pixel counts, boxes, centroids and mean confidence of labels 1..prompt_count.

    labels: (H, W) uint8, 0 = background, k = prompt k (1-based).
    confidence: (H, W) float32.
    """
    flat = labels.ravel()
    bins = prompt_count + 1
    counts = np.bincount(flat, minlength=bins)[:bins]
    rows, cols = np.indices(labels.shape)
    sum_x = np.bincount(flat, weights=cols.ravel(), minlength=bins)[:bins]
    sum_y = np.bincount(flat, weights=rows.ravel(), minlength=bins)[:bins]
    sum_conf = np.bincount(flat, weights=confidence.ravel(), minlength=bins)[:bins]
    safe = np.maximum(counts, 1)
    boxes = np.zeros((prompt_count, 4), np.int64)
    # Only labels that occur cost a scan; the box comes from the row and column projections.
    present = np.flatnonzero(counts[1:]) + 1
    for label in present:
        hit = labels == label
        ys = np.flatnonzero(hit.any(axis=1))
        xs = np.flatnonzero(hit.any(axis=0))
        boxes[label - 1] = (xs[0], ys[0], xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1)
    centroids = np.stack([sum_x / safe, sum_y / safe], axis=1)[1:]
    centroids[counts[1:] == 0] = 0.0
    mean_confidence = (sum_conf / safe)[1:].astype(np.float32)
    return RegionStats(counts[1:].astype(np.int64), boxes, centroids, mean_confidence)


def palette(size: int = 256) -> np.ndarray:
    """Return (size, 3) uint8 distinct colours; entry 0 (background) is black."""
    hues = (np.arange(size) * 47) % 180  # a large prime step spreads neighbours apart in hue
    hsv = np.stack([hues, np.full(size, 220), np.full(size, 255)], axis=1).astype(np.uint8)
    colours = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


PALETTE = palette()


def render_overlay(image_rgb: np.ndarray, labels: np.ndarray, stats: RegionStats,
                   names: Sequence[str], alpha: float = 0.5) -> np.ndarray:
    """Blend each prompt's colour over its pixels and write its label at the centroid."""
    overlay = image_rgb.copy()
    foreground = labels > 0
    if foreground.any():
        colours = PALETTE[labels[foreground]].astype(np.float32)
        blended = (1.0 - alpha) * image_rgb[foreground].astype(np.float32) + alpha * colours
        overlay[foreground] = blended.astype(np.uint8)
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
