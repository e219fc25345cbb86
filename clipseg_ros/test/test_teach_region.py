"""
The object under a click (core/teach_region.py) on synthetic scenes with exact object masks:
each source finds the clicked object, implausible regions and bad pixels are refused.
"""

import math

from clipseg_ros.core.teach_region import (
    DEPTH_SURFACE, INSTANCE, middle_pixel, object_under_pixel, pixel_in_frame, RegionLimits,
    RegionRefused)
from clipseg_ros.tools.scenes import render_scene
import cv2
import numpy as np
import pytest

MIN_IOU = 0.8
SEEDS = range(300, 310)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@pytest.fixture(scope='module')
def scenes():
    return [render_scene(seed, 640, 480) for seed in SEEDS]


def clicks(scenes):
    """(scene, object, its middle pixel) of every object large enough to teach."""
    for scene in scenes:
        for obj in scene.objects:
            if obj.mask.sum() >= RegionLimits().min_pixels:
                yield scene, obj, middle_pixel(obj.mask)


def table_pixel(scene) -> tuple[int, int]:
    """A pixel of the table with depth, at least 30 px from every object."""
    far = cv2.distanceTransform((scene.label_image() == 0).astype(np.uint8), cv2.DIST_L2, 5)
    rows, columns = np.nonzero((far > 30) & (scene.depth_m > 0))
    pick = len(rows) // 2
    return int(columns[pick]), int(rows[pick])


def test_middle_pixel_lies_inside_any_shape():
    ring = np.zeros((60, 60), bool)
    cv2.circle(ring.view(np.uint8), (30, 30), 20, 1, 8)  # its centroid is outside it
    column, row = middle_pixel(ring)
    assert ring[row, column]


@pytest.mark.parametrize('source', [DEPTH_SURFACE, 'colour_region'])
def test_each_source_finds_the_clicked_object(scenes, source):
    ious, refused = [], 0
    for scene, obj, (column, row) in clicks(scenes):
        depth = scene.depth_m if source == DEPTH_SURFACE else None
        try:
            region = object_under_pixel(scene.rgb, column, row, depth_m=depth)
        except RegionRefused:
            refused += 1
            ious.append(0.0)
            continue
        assert region.method == source
        ious.append(iou(region.mask, obj.mask))
    print(f'{source}: {len(ious)} clicks, mean IoU {np.mean(ious):.3f}, {refused} refused')
    assert len(ious) >= 20
    assert np.mean(ious) >= MIN_IOU, ious


def test_an_instance_under_the_pixel_comes_first(scenes):
    scene = scenes[0]
    obj = scene.objects[0]
    column, row = middle_pixel(obj.mask)
    instances = np.zeros(obj.mask.shape, np.uint16)
    blob = np.zeros_like(obj.mask)
    blob[row - 12:row + 13, column - 12:column + 13] = True  # not the object's shape
    instances[blob] = 3
    region = object_under_pixel(scene.rgb, column, row, instance_image=instances,
                                depth_m=scene.depth_m)
    assert region.method == INSTANCE
    np.testing.assert_array_equal(region.mask, blob)
    # Off every instance, the next source answers.
    instances[:] = 0
    region = object_under_pixel(scene.rgb, column, row, instance_image=instances,
                                depth_m=scene.depth_m)
    assert region.method == DEPTH_SURFACE


def test_a_click_on_the_table_is_refused_with_depth(scenes):
    for scene in scenes:
        with pytest.raises(RegionRefused, match='supporting surface'):
            object_under_pixel(scene.rgb, *table_pixel(scene), depth_m=scene.depth_m)


def test_a_click_on_the_table_is_refused_by_colour_mostly(scenes):
    """Without depth, a click on the wooden table floods most of the frame: refused."""
    refused = 0
    for scene in scenes:
        try:
            object_under_pixel(scene.rgb, *table_pixel(scene))
        except RegionRefused as error:
            assert 'of the frame' in str(error) or 'fewer than' in str(error)
            refused += 1
    assert refused >= 0.8 * len(scenes), refused


def test_the_whole_frame_and_a_speck_are_refused():
    grey = np.full((120, 160, 3), 128, np.uint8)
    with pytest.raises(RegionRefused, match='100% of the frame'):
        object_under_pixel(grey, 80, 60)
    grey[50:54, 70:74] = (250, 20, 20)
    with pytest.raises(RegionRefused, match='16 pixels, fewer than 100'):
        object_under_pixel(grey, 71, 51)
    assert object_under_pixel(grey, 71, 51, limits=RegionLimits(min_pixels=16)).mask.sum() == 16


@pytest.mark.parametrize('x, y', [(-1.0, 5.0), (160.0, 5.0), (5.0, 120.0), (5.0, -0.6),
                                  (math.nan, 5.0), (5.0, math.inf), (-math.inf, 0.0),
                                  (1e300, 5.0), (-1e300, -1e300), (2.0 ** 63, 2.0 ** 63)])
def test_pixels_outside_the_frame_or_not_finite_are_refused(x, y):
    with pytest.raises(RegionRefused, match='outside|finite'):
        object_under_pixel(np.zeros((120, 160, 3), np.uint8), x, y)


def test_a_pixel_covers_half_a_pixel_around_its_centre():
    assert pixel_in_frame(-0.4, 119.4, 160, 120) == (0, 119)
    assert pixel_in_frame(159.49, 0.0, 160, 120) == (159, 0)
    with pytest.raises(RegionRefused):
        pixel_in_frame(159.5, 0.0, 160, 120)


def test_maps_of_another_size_are_refused():
    rgb = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(RegionRefused, match='depth image is 80x60'):
        object_under_pixel(rgb, 5, 5, depth_m=np.ones((60, 80), np.float32))
    with pytest.raises(RegionRefused, match='instance image is 160x121'):
        object_under_pixel(rgb, 5, 5, instance_image=np.ones((121, 160), np.uint16))


def test_random_frames_depths_and_clicks_give_a_region_or_a_refusal():
    """Fuzzed: any frame size, noise or flat colour, depth with NaN, inf, negatives and zeros,
    stray instance images, clicks anywhere: a mask of the frame's size or RegionRefused."""
    rng = np.random.default_rng(5)
    answered = refused = 0
    for _ in range(150):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        rgb = (rng.integers(0, 256, (height, width, 3)) if rng.random() < 0.5
               else np.full((height, width, 3), rng.integers(0, 256, 3))).astype(np.uint8)
        depth = None
        if rng.random() < 0.5:
            depth = rng.choice(np.array([0.0, np.nan, np.inf, -1.0, 0.5, 0.51, 2.0],
                                        np.float32), (height, width))
        instances = None
        if rng.random() < 0.3:
            instances = rng.integers(0, 3, (height, width)).astype(np.uint16)
        x, y = rng.choice([rng.uniform(-5, width + 5), math.nan, 1e308, -0.5, 0.0]), \
            rng.uniform(-5, height + 5)
        try:
            region = object_under_pixel(rgb, x, y, depth_m=depth, instance_image=instances,
                                        limits=RegionLimits(min_pixels=1, max_fraction=1.0))
        except RegionRefused:
            refused += 1
            continue
        assert region.mask.shape == (height, width) and region.mask.dtype == bool
        answered += 1
    assert answered > 20 and refused > 20, (answered, refused)
