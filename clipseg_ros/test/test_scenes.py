"""Tests of the synthetic tabletop generator (clipseg_ros.tools.scenes)."""

from functools import lru_cache

from clipseg_ros.tools.scenes import (
    all_kinds, COLOURS, depth_to_millimetres, Intrinsics, phrase, PHRASINGS, render_scene,
    Scene, SHAPES)
import numpy as np
import pytest

SEEDS = range(12)


@lru_cache(maxsize=None)
def scene(seed: int, width: int = 640, height: int = 480) -> Scene:
    """Render once per test session: rendering is most of these tests' time."""
    return render_scene(seed, width, height)


def test_same_seed_same_scene_and_other_seed_other_scene():
    first, again = render_scene(5), render_scene(5)
    assert np.array_equal(first.rgb, again.rgb)
    assert np.array_equal(first.depth_m, again.depth_m)
    assert first.intrinsics == again.intrinsics
    assert [o.kind for o in first.objects] == [o.kind for o in again.objects]
    for a, b in zip(first.objects, again.objects):
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.centroid_3d, b.centroid_3d)
    other = scene(6)
    assert not np.array_equal(first.rgb, other.rgb)


def test_outputs_have_the_documented_types_and_shapes():
    s = scene(0)
    assert s.rgb.shape == (480, 640, 3) and s.rgb.dtype == np.uint8
    assert s.depth_m.shape == (480, 640) and s.depth_m.dtype == np.float32
    assert 1 <= len(s.objects) <= 5
    for obj in s.objects:
        assert obj.shape in SHAPES and obj.colour in COLOURS
        assert obj.mask.shape == (480, 640) and obj.mask.dtype == bool
        assert obj.centroid_3d.shape == (3,)
    assert len(s.kinds()) == len(s.objects)  # kinds are distinct within a scene


def test_every_shape_colour_and_object_count_occurs():
    scenes = [scene(seed) for seed in SEEDS]
    kinds = {obj.kind for s in scenes for obj in s.objects}
    assert {k[0] for k in kinds} == set(SHAPES)
    assert {k[1] for k in kinds} == set(COLOURS)
    assert {len(s.objects) for s in scenes} >= {1, 5}


def _colour_name(mean_rgb: np.ndarray) -> str:
    red, green, blue = mean_rgb
    if red > 1.3 * blue and green > 1.3 * blue and abs(red - green) < 0.35 * max(red, green):
        return 'yellow'
    return ('red', 'green', 'blue')[int(np.argmax(mean_rgb))]


def test_masks_are_disjoint_and_match_the_colours_in_the_image():
    for seed in SEEDS:
        s = scene(seed)
        total = np.zeros(s.depth_m.shape, dtype=int)
        for obj in s.objects:
            assert obj.mask.any()
            total += obj.mask
            assert _colour_name(s.rgb[obj.mask].astype(float).mean(axis=0)) == obj.colour, \
                (seed, obj.kind)
        assert total.max() == 1
        labels = s.label_image()
        assert ((labels > 0) == (total > 0)).all()


def test_object_boundaries_are_edges_in_the_image():
    """The mask follows the object: the colour changes across its outline."""
    import cv2
    s = scene(3)
    for obj in s.objects:
        mask = obj.mask.astype(np.uint8)
        inner = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
        ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)).astype(bool) & ~mask.astype(bool)
        ring &= s.label_image() == 0
        if inner.sum() < 20 or ring.sum() < 20:
            continue
        inside = s.rgb[inner].astype(float).mean(axis=0)
        outside = s.rgb[ring].astype(float).mean(axis=0)
        assert np.abs(inside - outside).max() > 40.0, obj.kind


def test_partial_occlusion_hides_the_covered_part_only():
    occluded = [(s, obj) for s in (scene(seed, 320, 240) for seed in range(30))
                for obj in s.objects if obj.occluded]
    assert len(occluded) >= 3
    for s, obj in occluded:
        assert not (obj.mask & ~obj.full_mask).any()
        hidden = obj.full_mask & ~obj.mask
        others = np.zeros_like(hidden)
        for other in s.objects:
            if other is not obj:
                others |= other.mask
        assert (hidden <= others).all()
        assert 0.35 <= obj.visible_fraction < 1.0


def _table_and_object_points(s: Scene) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(s.depth_m > 0)
    points = s.intrinsics.back_project(cols, rows, s.depth_m[rows, cols])
    heights = points @ s.table_normal + s.table_offset
    on_table = s.label_image()[rows, cols] == 0
    return heights[on_table], heights[~on_table]


def test_depth_lies_on_the_table_plane_through_the_intrinsics():
    for seed in SEEDS[:6]:
        s = scene(seed)
        table, _ = _table_and_object_points(s)
        # Range noise is about a millimetre at these distances.
        assert np.median(np.abs(table)) < 0.002
        assert np.quantile(np.abs(table), 0.999) < 0.01
        assert np.linalg.norm(s.table_normal) == pytest.approx(1.0)
        assert s.table_normal[2] < 0  # the normal points back up towards the camera


def test_objects_stand_on_the_table_with_their_heights():
    for seed in SEEDS[:6]:
        s = scene(seed)
        for obj in s.objects:
            valid = obj.mask & (s.depth_m > 0)
            rows, cols = np.nonzero(valid)
            points = s.intrinsics.back_project(cols, rows, s.depth_m[rows, cols])
            heights = points @ s.table_normal + s.table_offset
            assert np.quantile(heights, 0.99) <= obj.height_m + 0.005
            assert np.quantile(heights, 0.99) >= obj.height_m - 0.005  # the top is seen
            assert heights.min() >= -0.01
            centre_height = s.table_normal @ obj.center_3d + s.table_offset
            assert centre_height == pytest.approx(obj.height_m / 2, abs=1e-9)


def test_centroid_matches_the_back_projected_visible_mask():
    for seed in SEEDS:
        s = scene(seed)
        for obj in s.objects:
            valid = obj.mask & (s.depth_m > 0)
            rows, cols = np.nonzero(valid)
            points = s.intrinsics.back_project(cols, rows, s.depth_m[rows, cols])
            error = np.linalg.norm(points.mean(axis=0) - obj.centroid_3d)
            # Depth holes (edges, blobs) move the mean of what the sensor sees: by a small
            # share of the object's size.
            assert error < 0.1 * obj.size_m, (seed, obj.kind, error, obj.size_m)
            assert obj.centroid_3d[2] > 0.2
            # The centroid projects inside the object's box in the image.
            u, v = s.intrinsics.project(obj.centroid_3d)[0]
            assert cols.min() - 1 <= u <= cols.max() + 1 and rows.min() - 1 <= v <= rows.max() + 1


def test_some_depth_is_missing_as_on_a_real_sensor():
    for seed in SEEDS[:6]:
        s = scene(seed)
        missing = (s.depth_m == 0).mean()
        assert 0.001 < missing < 0.15
        assert np.isfinite(s.depth_m).all() and s.depth_m.min() >= 0.0


def test_depth_in_millimetres():
    s = scene(1)
    millimetres = s.depth_mm()
    assert millimetres.dtype == np.uint16 and millimetres.shape == s.depth_m.shape
    assert ((millimetres == 0) == (s.depth_m == 0)).all()
    valid = s.depth_m > 0
    assert np.abs(millimetres[valid] - s.depth_m[valid] * 1000.0).max() <= 0.5 + 1e-3
    assert depth_to_millimetres(np.array([70.0, np.nan], dtype=np.float32)).tolist() == [65535, 0]


@pytest.mark.parametrize('width,height', [(640, 480), (1280, 720), (97, 61)])
def test_any_frame_size(width, height):
    s = scene(2, width, height)
    assert s.rgb.shape == (height, width, 3)
    assert s.depth_m.shape == (height, width)
    assert (s.intrinsics.width, s.intrinsics.height) == (width, height)
    for obj in s.objects:
        assert obj.mask.shape == (height, width) and obj.mask.any()


def test_objects_scale_with_the_frame():
    small, large = scene(4, 320, 240), scene(4, 640, 480)
    assert [o.kind for o in small.objects] == [o.kind for o in large.objects]
    assert large.intrinsics.fx == pytest.approx(2 * small.intrinsics.fx)
    for a, b in zip(small.objects, large.objects):
        assert b.pixel_count / a.pixel_count == pytest.approx(4.0, rel=0.1)
        assert np.allclose(a.centroid_3d, b.centroid_3d, atol=0.003)


def test_include_forces_a_kind_and_num_objects_is_honoured():
    s = render_scene(11, 320, 240, num_objects=2, include=[('star', 'blue')])
    assert ('star', 'blue') in s.kinds()
    assert len(s.objects) <= 2
    with pytest.raises(ValueError):
        render_scene(0, num_objects=6)
    with pytest.raises(ValueError):
        render_scene(0, 16, 16)


def test_intrinsics_round_trip():
    k = Intrinsics(640, 480, 500.0, 501.0, 319.5, 239.5)
    points = np.array([[0.1, -0.05, 0.8], [0.0, 0.0, 1.0]])
    u, v = k.project(points).T
    assert np.allclose(k.back_project(u, v, points[:, 2]), points)
    assert np.allclose(k.matrix() @ points[1], [319.5, 239.5, 1.0])


def test_phrases_name_colour_and_shape():
    rng = np.random.default_rng(0)
    s = scene(0)
    assert phrase(s.objects[0]) == f'{s.objects[0].colour} {s.objects[0].shape}'
    seen = {phrase(('circle', 'red'), rng) for _ in range(200)}
    assert seen == {t.format(colour='red', shape='circle') for t in PHRASINGS}
    assert {'red circle', 'the red circle', 'a red circle'} <= seen
    assert len(all_kinds()) == len(SHAPES) * len(COLOURS)
