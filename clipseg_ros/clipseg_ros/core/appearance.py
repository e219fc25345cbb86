"""
What an instance looks like, in a few numbers: a colour histogram of its pixels in the camera
frame, and the distance between two of them. numpy and OpenCV, no ROS.

The histogram counts each pixel in one of 4 x 4 x 4 RGB cells (the top two bits of each
channel) and is normalised to sum 1; the distance is Hellinger's, sqrt(1 - sum sqrt(p q)), in
[0, 1]: 0 for the same colours, 1 for no colour in common. Coarse cells keep the histogram of one
object steady through sensor noise, shading and a mask's flicker at its rim, and still tell a
red mug from a blue one or from the table a false blob of the mask lies on. It cannot tell two
objects of one colour apart: the tracker uses it beside position, never instead of it.

One histogram for all instances at once, over the box around them: its cost grows with that
box, not with the number of instances (docs/depth.md has the figures).
"""

from clipseg_ros.core.region_stats import value_counts
import cv2
import numpy as np

BITS_PER_CHANNEL = 2
CELLS = 1 << (3 * BITS_PER_CHANNEL)


def colour_signatures(image_rgb: np.ndarray, instance_image: np.ndarray,
                      count: int) -> np.ndarray:
    """
    (count, CELLS) float32 colour histograms of instances 1..count of ``instance_image``.

    ``image_rgb`` (H, W, 3) uint8 is the frame; ``instance_image`` (H, W) integer, 0 = none,
    k = the k-th instance (1-based). An instance without pixels gets a row of zeros.
    """
    if image_rgb.shape[:2] != instance_image.shape or image_rgb.ndim != 3:
        raise ValueError(f'a frame of {image_rgb.shape} for instances of '
                         f'{instance_image.shape}')
    histograms = np.zeros((count, CELLS), np.float32)
    if count == 0 or instance_image.size == 0:
        return histograms
    shift = 8 - BITS_PER_CHANNEL

    def colour_cells(image: np.ndarray) -> np.ndarray:
        red, green, blue = cv2.split(np.ascontiguousarray(image, np.uint8))
        return ((red >> shift) << (2 * BITS_PER_CHANNEL)) | \
            ((green >> shift) << BITS_PER_CHANNEL) | (blue >> shift)

    if instance_image.dtype == np.uint16 and (count + 2) * CELLS <= 1 << 16:
        # Only the box around every instance's pixels counts: objects seldom fill the frame.
        x, y, w, h = cv2.boundingRect(cv2.inRange(instance_image, 1, count))
        if w == 0:
            return histograms
        # One 16-bit count of owner and cell together. Owners above ``count`` are clipped to
        # count + 1, whose bins lie past the range.
        owners = np.minimum(instance_image[y:y + h, x:x + w], np.uint16(count + 1))
        flat = owners * np.uint16(CELLS) + colour_cells(image_rgb[y:y + h, x:x + w])
        counts = value_counts(flat, (count + 1) * CELLS)[CELLS:].reshape(count, CELLS)
    else:
        owners = instance_image.ravel()
        where = np.flatnonzero((owners > 0) & (owners <= count))
        flat = (owners[where].astype(np.int64) - 1) * CELLS + \
            colour_cells(image_rgb).ravel()[where]
        counts = np.bincount(flat, minlength=count * CELLS).reshape(count, CELLS)
    totals = counts.sum(axis=1, keepdims=True)
    return (counts / np.maximum(totals, 1)).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) Hellinger distances in [0, 1] of (A, CELLS) and (B, CELLS) histograms."""
    overlap = np.sqrt(a.astype(np.float64)) @ np.sqrt(b.astype(np.float64)).T
    return np.sqrt(np.clip(1.0 - overlap, 0.0, 1.0))
