"""
Refinement of probability maps at the frame's size (core/refine.py) through the frame-map code
the engine uses, against a dense guided filter written here with OpenCV and numpy.
"""

import cv2
import numpy as np
import pytest
import torch

from clipseg_ros.core.cell_statistics import box, cell_means
from clipseg_ros.core.frame_maps import labels_at_frame_size
from clipseg_ros.core.refine import (
    cell_size, CELL_RADIUS, check_depths, GuidedRefinement, RefineSettings)


def refined_maps(maps, image, depth=None, settings=RefineSettings(), patch_pixels=24.0,
                 threshold=0.5, every_prompt=True, told_threshold=False):
    """The frame maps the engine makes from (N, r, r) maps with this refinement."""
    refinement = GuidedRefinement(
        torch.from_numpy(maps), torch.from_numpy(image),
        None if depth is None else torch.from_numpy(depth), settings, patch_pixels,
        every_prompt=every_prompt, threshold=threshold if told_threshold else None)
    height, width = image.shape[:2]
    result = labels_at_frame_size(refinement.cell_maps, height, width, threshold, True,
                                  make_slab=refinement.slab)
    return result, refinement


def bilinear_maps(maps, height, width, threshold=0.5):
    return labels_at_frame_size(torch.from_numpy(maps), height, width, threshold, True)


def two_colour_frame(height, width, mask, inside=(200, 40, 40), outside=(60, 120, 60)):
    image = np.empty((height, width, 3), np.uint8)
    image[:] = outside
    image[mask] = inside
    return image


def disc(height, width, centre, radius):
    rows, columns = np.mgrid[:height, :width]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius ** 2


def reference_filter(image, maps, size, radius, epsilon, depth=None, depth_weight=0.0):
    """
    The fast guided filter (He and Sun) written independently: statistics on s x s cell means
    with cv2 box filters and a numpy solve per cell, coefficients resized bilinearly with cv2,
    applied to every pixel.
    """
    height, width = image.shape[:2]
    rows, columns = height // size, width // size
    guide = image.astype(np.float64) / 255.0
    channels = [guide[..., c] for c in range(3)]
    if depth is not None:
        channels.append(depth_weight * depth.astype(np.float64))
    full = np.stack(channels, axis=-1)
    cells = full.reshape(rows, size, columns, size, -1).mean(axis=(1, 3))
    probabilities = np.stack([cv2.resize(m, (columns, rows), interpolation=cv2.INTER_LINEAR)
                              for m in maps.astype(np.float64)])

    def mean(x):
        return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1),
                             borderType=cv2.BORDER_CONSTANT, normalize=False) / \
            cv2.boxFilter(np.ones_like(x), -1, (2 * radius + 1, 2 * radius + 1),
                          borderType=cv2.BORDER_CONSTANT, normalize=False)

    count = cells.shape[-1]
    guide_mean = np.stack([mean(cells[..., c]) for c in range(count)], -1)
    variance = np.empty((rows, columns, count, count))
    for c in range(count):
        for d in range(count):
            variance[..., c, d] = mean(cells[..., c] * cells[..., d]) - \
                guide_mean[..., c] * guide_mean[..., d]
    variance += epsilon * np.eye(count)
    outputs = []
    for p in probabilities:
        p_mean = mean(p)
        covariance = np.stack([mean(cells[..., c] * p) - guide_mean[..., c] * p_mean
                               for c in range(count)], -1)
        a = np.linalg.solve(variance, covariance[..., None])[..., 0]
        b = p_mean - (a * guide_mean).sum(-1)
        a = np.stack([mean(a[..., c]) for c in range(count)], -1)
        b = mean(b)
        up = [cv2.resize(a[..., c], (width, height), interpolation=cv2.INTER_LINEAR)
              for c in range(count)]
        q = cv2.resize(b, (width, height), interpolation=cv2.INTER_LINEAR)
        for c in range(count):
            q = q + up[c] * full[..., c]
        outputs.append(np.clip(q, 0.0, 1.0))
    return np.stack(outputs)


def blurred_map(mask, side, shift=(0, 0), blur=1.5):
    """The mask shifted, area-resized to side x side and blurred: a coarse, soft map."""
    moved = np.roll(mask.astype(np.float32), shift, axis=(0, 1))
    small = cv2.resize(moved, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), blur).astype(np.float32)


def test_matches_a_dense_guided_filter_written_independently():
    height, width = 96, 256
    rng = np.random.default_rng(0)
    truth = disc(height, width, (40, 70), 22)
    image = two_colour_frame(height, width, truth)
    # Texture on the right half only: cells far from the disc there stay flat.
    image[:, :40] = np.clip(image[:, :40] + rng.normal(0, 6, (height, 40, 3)), 0,
                            255).astype(np.uint8)
    maps = np.stack([blurred_map(truth, 16, (3, -2)), blurred_map(~truth, 16)])
    settings = RefineSettings(radius=0.5, epsilon=1e-3)
    result, refinement = refined_maps(maps, image, settings=settings, patch_pixels=32.0)
    size = refinement.size
    assert size == cell_size(16.0) == 16
    assert 0 < refinement.active_cells < 0.75 * maps.shape[0] * 12 * 32
    expected = reference_filter(image, maps, size, max(1, round(16.0 / size)), 1e-3)
    difference = np.abs(result.probabilities.numpy() - expected)
    # Cells left to the resized cell maps differ by about |A| x the colour's spread in them.
    assert np.quantile(difference, 0.99) < 0.01 and difference.max() < 0.05
    assert (result.labels.numpy() == 1 + expected.argmax(0)).mean() > 0.995 or \
        np.mean((result.labels.numpy() > 0) == (expected.max(0) >= 0.5)) > 0.995


def test_an_exact_mask_stays_exact():
    height, width = 96, 128
    truth = np.zeros((height, width), bool)
    truth[24:72, 32:96] = True
    image = two_colour_frame(height, width, truth)
    # Maps at the frame's size that already follow the edge, and coarse maps whose bilinear
    # upsampling crosses 0.5 on the edge too.
    for maps in (truth[None].astype(np.float32),
                 cv2.resize(truth.astype(np.float32), (32, 24),
                            interpolation=cv2.INTER_AREA)[None]):
        before = bilinear_maps(maps, height, width).labels.numpy() > 0
        assert (before != truth).mean() < 0.001  # 0.5 exactly on the edge: rounding decides
        refined, _ = refined_maps(maps, image)
        np.testing.assert_array_equal(refined.labels.numpy() > 0, truth)


def test_a_blurred_border_moves_onto_the_true_edge():
    height, width = 120, 160
    truth = disc(height, width, (60, 80), 30)
    image = two_colour_frame(height, width, truth)
    maps = blurred_map(truth, 20, shift=(4, 5), blur=1.2)[None]
    before = bilinear_maps(maps, height, width).labels.numpy() > 0
    after = refined_maps(maps, image, patch_pixels=48.0)[0].labels.numpy() > 0
    wrong_before, wrong_after = (before != truth).sum(), (after != truth).sum()
    assert wrong_before > 300, 'the coarse border must be off the edge to begin with'
    assert wrong_after < wrong_before / 5
    # What remains wrong lies on the true edge, not beside it.
    edge = cv2.morphologyEx(truth.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5)))
    assert ((after != truth) & (edge == 0)).sum() <= wrong_after // 4


def test_depth_edges_are_edges_where_colour_has_none():
    height, width = 96, 128
    truth = np.zeros((height, width), bool)
    truth[:, :60] = True                       # the near object: left of column 60
    image = np.full((height, width, 3), 128, np.uint8)  # one colour: no colour edge
    depth = np.where(truth, 0.6, 0.9).astype(np.float32)
    depth[::7, ::5] = np.nan                   # holes, as sensors have
    depth[40:44, 58:62] = 0.0
    maps = blurred_map(truth, 16, shift=(0, 8), blur=1.0)[None]
    colour_only = refined_maps(maps, image, depth, patch_pixels=48.0)[0].labels.numpy() > 0
    with_depth, refinement = refined_maps(maps, image, depth,
                                          RefineSettings(depth_weight=5.0), patch_pixels=48.0)
    with_depth = with_depth.labels.numpy() > 0
    assert refinement.active_cells > 0
    assert (colour_only != truth).sum() > 4 * height, 'colour alone cannot find this edge'
    assert (with_depth != truth).sum() < (colour_only != truth).sum() / 4
    columns_right = np.nonzero((with_depth != truth).any(axis=0))[0]
    assert columns_right.size == 0 or np.abs(columns_right - 59.5).max() <= 4


def test_frames_of_odd_sizes_and_every_cell_size():
    rng = np.random.default_rng(3)
    for height, width, patch in ((37, 53, 10.0), (5, 7, 80.0), (61, 1, 3.0), (200, 31, 400.0)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        maps = rng.random((3, 9, 9), dtype=np.float32)
        for every_prompt in (True, False):
            result, refinement = refined_maps(maps, image, patch_pixels=patch,
                                              every_prompt=every_prompt, threshold=0.3)
            assert result.labels.shape == (height, width)
            probabilities = result.probabilities.numpy()
            assert np.isfinite(probabilities).all()
            assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
            confidence = result.confidence.numpy()
            np.testing.assert_allclose(confidence, probabilities.max(0))
            assert refinement.size == cell_size(RefineSettings().radius * patch)
            assert refinement.size % 2 == 0


def test_contending_prompts_only_leave_labels_and_confidence_unchanged():
    height, width = 96, 128
    truth = disc(height, width, (48, 64), 25)
    image = two_colour_frame(height, width, truth)
    maps = np.stack([blurred_map(truth, 16, (2, 2)), blurred_map(~truth, 16),
                     0.05 * blurred_map(truth, 16), np.full((16, 16), 0.02, np.float32)])
    every, _ = refined_maps(maps, image, threshold=0.3)
    some, refinement = refined_maps(maps, image, threshold=0.3, every_prompt=False)
    np.testing.assert_array_equal(every.labels.numpy(), some.labels.numpy())
    np.testing.assert_allclose(every.confidence.numpy(), some.confidence.numpy(), atol=1e-6)
    all_cells = GuidedRefinement(torch.from_numpy(maps), torch.from_numpy(image), None,
                                 RefineSettings(), 24.0).active_cells
    assert refinement.active_cells < all_cells


def test_told_the_threshold_only_cells_that_can_change_a_label_are_exact():
    """Labels as the exact filter's; confidence elsewhere on the same side of the threshold."""
    height, width = 96, 128
    truth = disc(height, width, (48, 64), 25)
    image = two_colour_frame(height, width, truth)
    image[10:30, 10:120] = (230, 230, 30)  # an edge far from the object's border
    maps = np.stack([blurred_map(truth, 16, (2, 2)), 0.05 * blurred_map(~truth, 16)])
    every, _ = refined_maps(maps, image, threshold=0.3)
    contending, by_contention = refined_maps(maps, image, threshold=0.3, every_prompt=False)
    told, by_threshold = refined_maps(maps, image, threshold=0.3, every_prompt=False,
                                      told_threshold=True)
    np.testing.assert_array_equal(every.labels.numpy(), told.labels.numpy())
    assert 0 < by_threshold.active_cells < by_contention.active_cells
    exact, approximate = every.confidence.numpy(), told.confidence.numpy()
    moved = np.abs(exact - approximate) > 1e-6
    assert moved.any()  # the cells away from the border were not filtered pixel by pixel
    assert np.array_equal(exact[moved] >= 0.3, approximate[moved] >= 0.3)
    np.testing.assert_array_equal(contending.labels.numpy(), told.labels.numpy())


def test_labels_are_the_exact_filters_on_textured_frames_of_any_size():
    """The blocks' value bounds hold on frames with texture, edges inside blocks and partial
    cells: the labels are those of the filter computed at every pixel, and the confidence is
    exact or on the same side of the threshold."""
    rng = np.random.default_rng(11)
    for height, width, patch in ((96, 128, 24.0), (101, 67, 30.0), (50, 203, 12.0)):
        for _ in range(3):
            truth = disc(height, width, (rng.integers(height), rng.integers(width)),
                         rng.integers(8, 40))
            image = two_colour_frame(height, width, truth, inside=tuple(rng.integers(0, 256, 3)),
                                     outside=tuple(rng.integers(0, 256, 3)))
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            # A saturated map too: the filter overshoots past 1 beside edges, and the exact
            # values are clamped there (a tie at 1 goes to the first prompt).
            maps = np.stack([np.ones((16, 16), np.float32),
                             blurred_map(truth, 16, tuple(rng.integers(-3, 4, 2))),
                             (blurred_map(~truth, 16) > 0.5).astype(np.float32),
                             rng.random((16, 16), dtype=np.float32)])
            every, _ = refined_maps(maps, image, patch_pixels=patch, threshold=0.3)
            told, refinement = refined_maps(maps, image, patch_pixels=patch, threshold=0.3,
                                            every_prompt=False, told_threshold=True)
            np.testing.assert_array_equal(every.labels.numpy(), told.labels.numpy())
            exact, approximate = every.confidence.numpy(), told.confidence.numpy()
            assert np.array_equal(exact >= 0.3, approximate >= 0.3)
            assert approximate.min() >= 0.0 and approximate.max() <= 1.0
            assert refinement.active_cells < refinement.active.size


def test_cell_means_of_a_large_bright_frame_do_not_overflow():
    # A whole 4096 x 4096 frame's int32 integral image of a white frame passes 2^31: the cell
    # means are summed a slab of rows at a time.
    white = torch.full((4096, 4096, 3), 255, dtype=torch.uint8)
    means = cell_means(white, None, 16, 0.0)
    assert means.shape == (3, 256, 256)
    assert torch.equal(means, torch.ones_like(means))
    ramp = torch.from_numpy(np.broadcast_to(np.arange(4096, dtype=np.uint8)[:, None, None],
                                            (4096, 4096, 3)).copy())
    rows = cell_means(ramp, None, 16, 0.0)[0, :, 0].numpy()
    expected = np.arange(4096, dtype=np.uint8).reshape(256, 16).astype(np.float64).mean(1)
    np.testing.assert_allclose(rows, expected / 255.0, atol=1e-6)


def test_settings_and_depth_images_are_checked():
    for bad in (dict(method='bilateral'), dict(radius=0.0), dict(radius=float('nan')),
                dict(epsilon=0.0), dict(depth_weight=-1.0), dict(radius=True)):
        with pytest.raises(ValueError):
            RefineSettings(**bad)
    assert not RefineSettings('none').enabled and RefineSettings().enabled
    frame = np.zeros((4, 6, 3), np.uint8)
    assert check_depths(None, [frame, frame]) == [None, None]
    for bad in ([np.zeros((4, 5), np.float32)], [np.zeros((4, 6), np.uint16)], [],
                ['depth']):
        with pytest.raises(ValueError):
            check_depths(bad, [frame])


@pytest.mark.parametrize('shape, radius', [((3, 37, 53), 2), ((130, 9, 7), 1), ((2, 1, 7), 3),
                                           ((1, 6, 1), 5), ((4, 20, 20), 0)])
def test_the_box_filter_is_a_mean_over_windows_cut_at_the_edges(shape, radius):
    maps = torch.from_numpy(np.random.default_rng(5).random(shape, dtype=np.float32))
    expected = np.empty(shape, np.float32)
    values = maps.numpy()
    for row in range(shape[1]):
        for column in range(shape[2]):
            window = values[:, max(0, row - radius):row + radius + 1,
                            max(0, column - radius):column + radius + 1]
            expected[:, row, column] = window.mean(axis=(1, 2))
    np.testing.assert_allclose(box(maps, radius).numpy(), expected, atol=1e-6)
