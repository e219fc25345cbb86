"""The operator overlay: colours over labelled pixels only, a distinct colour per prompt."""

from clipseg_ros.core.overlay import PALETTE, render_overlay
from clipseg_ros.core.region_stats import region_stats
import numpy as np


def test_overlay_tints_labelled_pixels_only():
    image = np.full((20, 30, 3), 100, np.uint8)
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:10] = 2
    stats = region_stats(labels, np.ones((20, 30), np.float32), prompt_count=2)
    overlay = render_overlay(image, labels, stats, ['', ''])  # no text drawn
    np.testing.assert_array_equal(overlay[labels == 0], image[labels == 0])
    expected = np.round(0.5 * 100 + 0.5 * PALETTE[2].astype(float))
    assert np.abs(overlay[7, 7].astype(float) - expected).max() <= 1
    assert PALETTE[0].tolist() == [0, 0, 0] and len({tuple(c) for c in PALETTE[1:17]}) == 16
