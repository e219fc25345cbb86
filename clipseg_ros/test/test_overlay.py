"""The operator overlay: a light tint and an outline per prompt, labels inside and apart."""

from clipseg_ros.core.overlay import (
    FILL_ALPHA, label_box, outline_width, overlaps, PALETTE, region_borders, render_overlay)
from clipseg_ros.core.region_stats import region_stats
import cv2
import numpy as np
import pytest


def test_overlay_tints_labelled_pixels_lightly_and_outlines_each_region():
    image = np.full((40, 60, 3), 100, np.uint8)
    labels = np.zeros((40, 60), np.uint8)
    labels[5:25, 5:25] = 2
    labels[10:30, 30:55] = 1
    stats = region_stats(labels, np.ones((40, 60), np.float32), prompt_count=2)
    overlay = render_overlay(image, labels, stats, ['', ''])  # no text drawn
    np.testing.assert_array_equal(overlay[labels == 0], image[labels == 0])
    expected = np.round((1 - FILL_ALPHA) * 100 + FILL_ALPHA * PALETTE[2].astype(float))
    assert np.abs(overlay[15, 15].astype(float) - expected).max() <= 1
    thickness = outline_width(40, 60)
    for row, column, label in ((5, 10, 2), (5 + thickness - 1, 10, 2), (29, 40, 1),
                               (20, 54, 1)):
        assert overlay[row, column].tolist() == PALETTE[label].tolist()
    assert overlay[5 + thickness, 15].tolist() != PALETTE[2].tolist()
    assert PALETTE[0].tolist() == [0, 0, 0] and len({tuple(c) for c in PALETTE[1:17]}) == 16


def test_borders_are_inside_regions_and_between_touching_ones():
    labels = np.zeros((12, 12), np.uint8)
    labels[:, :6] = 1
    labels[:, 6:] = 2
    borders = region_borders(labels, 1)
    assert borders[:, 5:7].all() and not borders[:, :5].any() and not borders[:, 7:].any()
    labels[:] = 3
    assert not region_borders(labels, 2).any(), 'the frame edge is not a border'


def test_labels_stay_inside_the_frame_and_apart():
    image = np.zeros((120, 160, 3), np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[0:3, 150:160] = 1     # a region in the top-right corner: its label would be cut
    labels[60:64, 78:82] = 2     # two small regions side by side: labels would overlap
    labels[60:64, 84:88] = 3
    stats = region_stats(labels, np.ones((120, 160), np.float32), prompt_count=3)
    placed = []
    for index in range(3):
        x, y = (int(v) for v in stats.centroids[index])
        box = label_box(x - 40, y - 8, 80, 16, 160, 120, placed)
        assert 0 <= box[0] and box[0] + box[2] <= 160 and 0 <= box[1] and box[1] + box[3] <= 120
        assert not any(overlaps(box, other) for other in placed)
        placed.append(box)
    overlay = render_overlay(image, labels, stats, ['blue square', 'red circle', 'green star'])
    assert overlay[:, :, :].any() and overlay.shape == image.shape


def _whole_frame_overlay(image: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """The overlay without text, computed over the whole frame: OpenCV's blend, and borders
    from each pixel's neighbours within the outline's thickness (the frame's edge repeated)."""
    thickness = outline_width(*labels.shape)
    colours = PALETTE[labels]
    tinted = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    padded = np.pad(labels, thickness, mode='edge')
    height, width = labels.shape
    differs = np.zeros(labels.shape, bool)
    for dy in range(2 * thickness + 1):
        for dx in range(2 * thickness + 1):
            differs |= padded[dy:dy + height, dx:dx + width] != labels
    expected = np.where((labels > 0)[..., None], tinted, image)
    return np.where(((labels > 0) & differs)[..., None], colours, expected)


@pytest.mark.parametrize('seed', range(16))
def test_overlay_equals_the_whole_frames_tint_and_outline(seed):
    """The overlay is worked out only around the labelled pixels: it must equal the whole
    frame's, also where regions touch the frame's edges or each other, cover it, or there are
    none, and with outlines thicker than a pixel."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(20, 200, 2))
    if seed >= 14:  # 2 and 3 pixel outlines
        height, width = (int(v) for v in rng.integers(360, 720, 2))
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    labels = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(0, 5))):  # boxes anywhere, edges included, may touch
        top, left = int(rng.integers(-5, height)), int(rng.integers(-5, width))
        size = rng.integers(1, max(2, min(height, width) // 2), 2)
        labels[max(top, 0):top + size[0], max(left, 0):left + size[1]] = rng.integers(1, 6)
    if seed >= 12:  # labels everywhere: the window is the whole frame
        labels = rng.integers(0, 6, (height, width)).astype(np.uint8)
    stats = region_stats(labels, np.ones(labels.shape, np.float32), prompt_count=5)
    overlay = render_overlay(image, labels, stats, [''] * 5)  # no text drawn
    np.testing.assert_array_equal(overlay, _whole_frame_overlay(image, labels, FILL_ALPHA))


def test_overlay_of_a_frame_and_labels_of_other_sizes_is_refused():
    labels = np.zeros((40, 60), np.uint8)
    with pytest.raises(ValueError, match='differ'):
        render_overlay(np.zeros((40, 50, 3), np.uint8), labels,
                       region_stats(labels, np.ones((40, 60), np.float32), 1), [''])
