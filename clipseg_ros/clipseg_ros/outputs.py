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
    height, width = labels.shape
    bins = prompt_count + 1
    wide = labels.astype(np.intp)
    # Per-row and per-column histograms of the labels: every statistic comes from these two
    # small tables, without a pass over the image per prompt.
    row_counts = np.bincount((wide + bins * np.arange(height)[:, None]).ravel(),
                             minlength=bins * height).reshape(height, bins).T[1:]
    column_counts = np.bincount((wide + bins * np.arange(width)[None, :]).ravel(),
                                minlength=bins * width).reshape(width, bins).T[1:]
    confidence_sums = np.bincount(wide.ravel(), weights=confidence.ravel(),
                                  minlength=bins)[1:bins]
    return stats_from_histograms(row_counts, column_counts, confidence_sums)


def stats_from_histograms(row_counts: np.ndarray, column_counts: np.ndarray,
                          confidence_sums: np.ndarray) -> RegionStats:
    """Build the statistics of N prompts from their label histograms.

    row_counts: (N, H), pixels of label k + 1 in each image row; column_counts: (N, W), the
    same per column; confidence_sums: (N,), the sum of confidence over each label's pixels.
    The engine computes these on its device (see ClipSegEngine.segment); region_stats here.
    """
    prompt_count, height = row_counts.shape
    width = column_counts.shape[1]
    counts = row_counts.sum(axis=1)
    safe = np.maximum(counts, 1)
    centroids = np.stack([column_counts @ np.arange(width) / safe,
                          row_counts @ np.arange(height) / safe], axis=1)
    boxes = np.zeros((prompt_count, 4), np.int64)
    present = counts > 0
    if present.any():
        rows_present, cols_present = row_counts[present] > 0, column_counts[present] > 0
        top = rows_present.argmax(axis=1)
        bottom = height - 1 - rows_present[:, ::-1].argmax(axis=1)
        left = cols_present.argmax(axis=1)
        right = width - 1 - cols_present[:, ::-1].argmax(axis=1)
        boxes[present] = np.stack([left, top, right - left + 1, bottom - top + 1], axis=1)
    mean_confidence = (confidence_sums / safe).astype(np.float32)
    return RegionStats(counts.astype(np.int64), boxes, centroids, mean_confidence)


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
    colours = PALETTE[labels]
    blended = cv2.addWeighted(image_rgb, 1.0 - alpha, colours, alpha, 0.0)
    overlay = image_rgb.copy()
    np.copyto(overlay, blended, where=(labels > 0)[:, :, None])
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
