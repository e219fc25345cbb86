"""
3D targets from labels and aligned depth, on synthetic tabletop scenes with exact geometry.

The ground truth comes from the scene's noise-free depth and its object masks; the package
sees what a sensor gives: noisy, quantised (16UC1 millimetres) or float (32FC1 metres) depth
with holes. The scenes put the camera 0.3 to 0.9 m from the objects.
"""

import array

from clipseg_ros.core.depth_targets import (
    CameraModel, depth_in_metres, labelled_points, prompt_targets, PromptTargets)
from clipseg_ros.depth_input import DepthPairing, PairedTargets, targets_of
from clipseg_ros.tools.scenes import render_scene
import numpy as np
import pytest
from scene_truth import camera_of, exact_surface
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

SCENE_SEEDS = range(12)


def sensor_depth(scene, encoding: str) -> np.ndarray:
    return scene.depth_mm() if encoding == '16UC1' else scene.depth_m


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_centroid_within_1cm_and_extent_within_2cm_of_the_ground_truth(encoding):
    checked = 0
    for seed in SCENE_SEEDS:
        scene = render_scene(seed, 640, 480)
        depth = depth_in_metres(sensor_depth(scene, encoding), encoding, max_depth=10.0)
        targets = prompt_targets(scene.label_image(), depth, camera_of(scene),
                                 len(scene.objects))
        for index, item in enumerate(scene.objects):
            surface = exact_surface(scene, item.mask)
            truth = np.median(surface, axis=0)
            low, high = np.percentile(surface, (5, 95), axis=0)
            error = np.linalg.norm(targets.centroids[index] - truth)
            assert error < 0.01, (seed, item.kind, error)
            assert np.abs(targets.extent_min[index] - low).max() < 0.02, (seed, item.kind)
            assert np.abs(targets.extent_max[index] - high).max() < 0.02, (seed, item.kind)
            assert targets.valid_pixels[index] > 0
            checked += 1
    assert checked >= 30


def test_16uc1_and_32fc1_agree_and_mean_the_same_units():
    scene = render_scene(3, 640, 480)
    labels, camera = scene.label_image(), camera_of(scene)
    in_mm = prompt_targets(labels, depth_in_metres(scene.depth_mm(), '16UC1', 10.0), camera,
                           len(scene.objects))
    in_m = prompt_targets(labels, depth_in_metres(scene.depth_m, '32FC1', 10.0), camera,
                          len(scene.objects))
    np.testing.assert_allclose(in_mm.centroids, in_m.centroids, atol=0.002)  # mm rounding


def test_invalid_depth_values_are_not_readings():
    raw16 = np.array([[0, 1000, 12000]], dtype=np.uint16)
    np.testing.assert_array_equal(np.isnan(depth_in_metres(raw16, '16UC1', 10.0)),
                                  [[True, False, True]])
    raw32 = np.array([[np.nan, np.inf, -1.0, 0.0, 2.5, 11.0]], dtype=np.float32)
    metres = depth_in_metres(raw32, '32FC1', 10.0)
    assert np.isnan(metres[0, [0, 1, 2, 3, 5]]).all() and metres[0, 4] == 2.5
    with pytest.raises(ValueError, match='depth encoding'):
        depth_in_metres(raw16, 'mono8', 10.0)


def test_erosion_keeps_background_pixels_out_of_the_centroid():
    """A mask that spills onto the table behind an object still gives the object's centroid."""
    scene = render_scene(5, 640, 480)
    item = max(scene.objects, key=lambda o: o.pixel_count)
    import cv2
    spilled = cv2.dilate(item.mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    depth = depth_in_metres(scene.depth_mm(), '16UC1', 10.0)
    truth = np.median(exact_surface(scene, item.mask), axis=0)
    eroded = prompt_targets(spilled, depth, camera_of(scene), 1, erosion_px=2)
    assert np.linalg.norm(eroded.centroids[0] - truth) < 0.01


def test_every_cloud_point_lies_on_its_object():
    scene = render_scene(7, 640, 480)
    labels, camera = scene.label_image(), camera_of(scene)
    depth = depth_in_metres(scene.depth_m, '32FC1', 10.0)
    points, point_labels = labelled_points(labels, depth, camera, decimation=2)
    assert len(points) > 100 and points.dtype == np.float32
    # Project each point back to its pixel: it must be a pixel of the object it is labelled
    # with, at the object's exact depth there (within sensor noise).
    u = np.rint(points[:, 0] * camera.fx / points[:, 2] + camera.cx).astype(int)
    v = np.rint(points[:, 1] * camera.fy / points[:, 2] + camera.cy).astype(int)
    assert (labels[v, u] == point_labels).all()
    assert (u % 2 == 0).all() and (v % 2 == 0).all(), 'decimation keeps every 2nd row/column'
    np.testing.assert_allclose(points[:, 2], scene.depth_exact_m[v, u], atol=0.02)


def test_a_prompt_without_depth_is_nan():
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 1:3] = 1
    labels[0, 5] = 2
    depth = np.full((4, 6), np.nan, np.float32)
    depth[1:3, 1:3] = 1.0
    targets = prompt_targets(labels, depth, CameraModel(6, 4, 5.0, 5.0, 3.0, 2.0), 3,
                             erosion_px=0)
    assert np.isfinite(targets.centroids[0]).all() and targets.valid_pixels[0] == 4
    assert np.isnan(targets.centroids[1:]).all() and (targets.valid_pixels[1:] == 0).all()


# ---------------------------------------------------------------------- pairing and refusals


def header_at(sec: int, nanosec: int = 0, frame_id: str = 'camera_color_optical') -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def depth_msg(depth: np.ndarray, encoding: str, header: Header) -> Image:
    depth = np.ascontiguousarray(depth)
    msg = Image(header=header, height=depth.shape[0], width=depth.shape[1], encoding=encoding,
                step=depth.strides[0])
    msg.data = array.array('B', np.ascontiguousarray(depth).tobytes())
    return msg


def info_msg(scene, width: int | None = None, fx: float | None = None) -> CameraInfo:
    i = scene.intrinsics
    info = CameraInfo(width=width or i.width, height=i.height)
    info.k = [fx if fx is not None else i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0]
    return info


@pytest.fixture(scope='module')
def scene():
    return render_scene(2, 640, 480)


def paired_for(pairing: DepthPairing, scene, header: Header,
               max_delay: float = 0.02) -> PairedTargets:
    labels = scene.label_image()
    paired = pairing.depth_for(header, labels.shape[1], labels.shape[0], max_delay=max_delay,
                               max_depth=10.0)
    return targets_of(paired, labels, len(scene.objects), erosion_px=2)


def test_a_frame_pairs_with_the_depth_of_its_stamp_or_the_nearest_within_the_delay(scene):
    pairing = DepthPairing()
    assert pairing.offer_camera_info(info_msg(scene)) is None
    for sec, nanosec in ((9, 0), (10, 5_000_000), (11, 0)):
        assert pairing.offer_depth(depth_msg(scene.depth_mm(), '16UC1',
                                             header_at(sec, nanosec))) is None
    paired = paired_for(pairing, scene, header_at(10))
    assert paired.depth_stamp_ns == 10 * 10**9 + 5_000_000 and paired.problem is None
    assert np.isfinite(paired.targets.centroids).all()
    missed = paired_for(pairing, scene, header_at(10, 500_000_000))
    assert missed.depth_stamp_ns is None and np.isnan(missed.targets.centroids).all()
    assert pairing.counters.frames_paired == 1 and pairing.counters.frames_without_depth == 1


@pytest.mark.parametrize('change, reason', [
    ('encoding', "depth encoding 'rgb8'"),
    ('bigendian', 'big-endian'),
    ('short_data', 'bytes, expected'),
])
def test_unreadable_depth_images_are_refused_with_the_reason(scene, change, reason):
    msg = depth_msg(scene.depth_mm(), '16UC1', header_at(1))
    if change == 'encoding':
        msg.encoding = 'rgb8'
    elif change == 'bigendian':
        msg.is_bigendian = 1
    else:
        msg.data = msg.data[:-2]
    pairing = DepthPairing()
    assert reason in pairing.offer_depth(msg)
    assert pairing.counters.depth_rejected == 1


def test_depth_or_camera_info_of_another_size_is_refused_naming_both_sizes(scene):
    pairing = DepthPairing()
    pairing.offer_camera_info(info_msg(scene))
    small = scene.depth_mm()[::2, ::2]
    assert pairing.offer_depth(depth_msg(small, '16UC1', header_at(1))) is None
    paired = paired_for(pairing, scene, header_at(1))
    assert 'depth image is 320x240 but the colour frame is 640x480' in paired.problem
    assert np.isnan(paired.targets.centroids).all()
    pairing.offer_depth(depth_msg(scene.depth_mm(), '16UC1', header_at(2)))
    pairing.offer_camera_info(info_msg(scene, width=1280))
    paired = paired_for(pairing, scene, header_at(2))
    assert 'camera_info is 1280x480 but the colour frame is 640x480' in paired.problem
    assert pairing.counters.frames_depth_refused == 2


def test_camera_info_with_zero_focal_length_is_refused(scene):
    pairing = DepthPairing()
    assert 'focal length' in pairing.offer_camera_info(info_msg(scene, fx=0.0))
    pairing.offer_depth(depth_msg(scene.depth_m, '32FC1', header_at(1)))
    paired = paired_for(pairing, scene, header_at(1))
    assert 'focal length' in paired.problem
    assert pairing.counters.depth_rejected == 1


def test_unknown_targets_are_nan():
    unknown = PromptTargets.unknown(2)
    assert np.isnan(unknown.centroids).all() and (unknown.valid_pixels == 0).all()


def test_the_subsample_of_a_large_prompt_favours_no_column():
    """
    A prompt with far more pixels than the statistics use is subsampled; the subsample must not
    visit only some columns (a raster stride of 75 at 640 px wide visits every 5th), or the
    centroid shifts on a plane whose depth changes along the rows. Over 40 rectangles on a
    tilted plane the raster stride was 1.8 mm off on average, up to 18 mm.
    """
    camera = CameraModel(640, 480, 525.0, 525.0, 319.5, 239.5)
    rows, columns = np.mgrid[0:480, 0:640]
    # z = 0.8 m at the centre, 0.4 mm deeper per column and 0.2 mm per row.
    depth = (0.8 + 0.0004 * (columns - 319.5) + 0.0002 * (rows - 239.5)).astype(np.float32)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(40):
        top, left = rng.integers(0, 200), rng.integers(0, 300)
        bottom, right = top + rng.integers(150, 280), left + rng.integers(150, 340)
        labels = np.zeros((480, 640), np.uint8)
        labels[top:bottom, left:right] = 1
        targets = prompt_targets(labels, depth, camera, 1, erosion_px=0)
        assert targets.valid_pixels[0] == labels.sum() > 4 * 4096
        z = depth[top:bottom, left:right].astype(np.float64).ravel()
        u = columns[top:bottom, left:right].ravel()
        v = rows[top:bottom, left:right].ravel()
        everything = np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy,
                               z], axis=1)
        errors.append(np.linalg.norm(targets.centroids[0] - np.median(everything, axis=0)))
        np.testing.assert_allclose(targets.extent_min[0],
                                   np.percentile(everything, 5, axis=0), atol=0.01)
    assert np.mean(errors) < 0.001 and np.max(errors) < 0.003, errors
