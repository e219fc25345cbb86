"""
Per-prompt statistics of a label image (pixel count, box, centroid, mean confidence): one
implementation from label histograms, which numpy computes on the host and torch on the GPU.
"""

from dataclasses import dataclass
from collections.abc import Mapping

import cv2
import numpy as np
import torch


@dataclass
class RegionStats:
    """Statistics of each prompt's pixels in a label image; arrays have one entry per prompt."""

    pixel_count: np.ndarray       # (N,) int64
    boxes: np.ndarray             # (N, 4) int64: x_offset, y_offset, width, height (0s if empty)
    centroids: np.ndarray         # (N, 2) float64: x (column), y (row); 0 if empty
    mean_confidence: np.ndarray   # (N,) float32; 0 if empty


def value_counts(image: np.ndarray, bins: int) -> np.ndarray:
    """
    (bins,) int64: how many pixels of a non-negative integer image hold each value
    0..bins-1 (larger values are not counted).
    """
    if image.dtype in (np.uint8, np.uint16) and image.size <= 1 << 24:
        # OpenCV's histogram is several times faster than numpy's bincount, and exact (float32
        # counts) up to 2^24 pixels.
        return cv2.calcHist([image], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
    return np.bincount(image.ravel(), minlength=bins)[:bins]


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
    label_histograms computes them on a torch device; region_stats with numpy.
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


def label_histograms(labels: torch.Tensor, confidence: torch.Tensor,
                     prompt_count: int) -> dict[str, torch.Tensor]:
    """
    Return the label histograms that :func:`stats_from_histograms` needs, on the labels' device.

    ``row_counts`` (H, N + 1) and ``column_counts`` (W, N + 1) count each label per image row
    and column; ``confidence_sums`` (N + 1,) adds up confidence per label. scatter_add_ into
    tables of known size, unlike bincount, needs no device synchronisation.
    """
    height, width = labels.shape
    bins = prompt_count + 1
    index = labels.long()
    ones = torch.ones((), dtype=torch.int64, device=labels.device).expand(height, width)
    row_counts = torch.zeros(height, bins, dtype=torch.int64, device=labels.device)
    row_counts.scatter_add_(1, index, ones)
    column_counts = torch.zeros(width, bins, dtype=torch.int64, device=labels.device)
    column_counts.scatter_add_(1, index.t(), ones.t())
    # float64: millions of float32 additions per label would lose digits.
    confidence_sums = torch.zeros(bins, dtype=torch.float64, device=labels.device)
    confidence_sums.index_add_(0, index.view(-1), confidence.view(-1).to(torch.float64))
    return {'row_counts': row_counts, 'column_counts': column_counts,
            'confidence_sums': confidence_sums}


def stats_from_label_histograms(tables: Mapping[str, np.ndarray]) -> RegionStats:
    """The statistics from :func:`label_histograms`' tables on the host (background dropped)."""
    return stats_from_histograms(tables['row_counts'][:, 1:].T, tables['column_counts'][:, 1:].T,
                                 tables['confidence_sums'][1:])
