"""Region statistics and overlay against straightforward per-label computations."""

import numpy as np
import pytest

from clipseg_ros.outputs import PALETTE, region_stats, render_overlay


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_region_stats_match_a_per_label_computation(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((37, 53), np.uint8)
    for label in (1, 3):  # prompt 2 and 4 stay absent
        y0, x0 = rng.integers(0, 30), rng.integers(0, 45)
        labels[y0:y0 + rng.integers(1, 8), x0:x0 + rng.integers(1, 9)] = label
    labels[rng.random(labels.shape) < 0.02] = 1  # scattered pixels widen prompt 1's box
    confidence = rng.random(labels.shape, dtype=np.float32)
    stats = region_stats(labels, confidence, prompt_count=4)
    for label in range(1, 5):
        hit = labels == label
        assert stats.pixel_count[label - 1] == hit.sum()
        if not hit.any():
            assert (stats.boxes[label - 1] == 0).all()
            assert (stats.centroids[label - 1] == 0).all()
            assert stats.mean_confidence[label - 1] == 0
            continue
        ys, xs = np.nonzero(hit)
        assert tuple(stats.boxes[label - 1]) == (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                                 ys.max() - ys.min() + 1)
        np.testing.assert_allclose(stats.centroids[label - 1], (xs.mean(), ys.mean()))
        assert stats.mean_confidence[label - 1] == pytest.approx(confidence[hit].mean(), 1e-5)


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
