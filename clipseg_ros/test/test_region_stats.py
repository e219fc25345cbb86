"""Region statistics against straightforward per-label computations, on the host and in torch."""

from clipseg_ros.core.region_stats import label_histograms, region_stats, stats_from_label_histograms
import numpy as np
import pytest
import torch


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


@pytest.mark.parametrize('prompt_count', [1, 4])
def test_device_label_histograms_give_the_numpy_statistics(prompt_count) -> None:
    # The CUDA path builds the statistics from torch histograms; the same torch code runs here.
    rng = np.random.default_rng(prompt_count)
    labels = np.zeros((47, 61), np.uint8)
    labels[5:20, 7:30] = 1
    labels[rng.random(labels.shape) < 0.1] = prompt_count  # scattered: widens the last box
    confidence = rng.random(labels.shape, dtype=np.float32)
    tables = label_histograms(torch.from_numpy(labels), torch.from_numpy(confidence),
                              prompt_count)
    got = stats_from_label_histograms({name: table.numpy() for name, table in tables.items()})
    expected = region_stats(labels, confidence, prompt_count)
    np.testing.assert_array_equal(got.pixel_count, expected.pixel_count)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_allclose(got.centroids, expected.centroids)
    np.testing.assert_allclose(got.mean_confidence, expected.mean_confidence, rtol=1e-6)
    assert got.pixel_count.sum() == (labels > 0).sum()
