"""
The node with aligned depth, in process over loopback DDS: 3D in the Segmentation message and
in ~/segment, the point cloud and markers, unpaired frames and refused depth counted.

The tiny random model cannot find objects, so these tests label the whole frame (one prompt,
threshold 0) and check the 3D numbers against the depth image itself; finding the named
object in 3D is tested with the trained miniature model.
"""

import array
import threading

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core.depth_targets import depth_in_metres
from clipseg_ros.core.refine import RefineSettings
from clipseg_ros_interfaces.srv import Segment
from clipseg_ros.tools.scenes import render_scene
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray


@pytest.fixture(scope='module')
def scene():
    return render_scene(4, 320, 240)


@pytest.fixture
def depth_node(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir, use_depth=True, threshold=0.0,
                          prompts=['the table'], depth_erosion_px=0, point_decimation=2)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node = harness.camera.node
    harness.depth_pub = node.create_publisher(Image, 'depth', qos)
    harness.info_pub = node.create_publisher(CameraInfo, 'camera_info', qos)
    harness.extra = {}
    harness.extra_ready = threading.Condition()

    def keep(name):
        def callback(msg):
            with harness.extra_ready:
                harness.extra[name] = msg
                harness.extra_ready.notify_all()
        return callback

    node.create_subscription(PointCloud2, 'points', keep('points'), qos)
    node.create_subscription(MarkerArray, 'markers', keep('markers'), qos)
    yield harness
    harness.close()


def camera_info(scene) -> CameraInfo:
    i = scene.intrinsics
    info = CameraInfo(width=i.width, height=i.height)
    info.k = [i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0]
    return info


def depth_image(depth: np.ndarray, encoding: str) -> Image:
    depth = np.ascontiguousarray(depth)
    msg = Image(height=depth.shape[0], width=depth.shape[1], encoding=encoding,
                step=depth.strides[0])
    msg.data = array.array('B', depth.tobytes())
    return msg


def whole_frame_median(scene, encoding: str) -> np.ndarray:
    """The median surface point of every valid depth pixel, straight from the scene."""
    if encoding == '16UC1':
        z = scene.depth_mm().astype(np.float64) / 1000.0
    else:
        z = scene.depth_m.astype(np.float64)
    rows, columns = np.nonzero(z > 0)
    z = z[rows, columns]
    i = scene.intrinsics
    points = np.stack([(columns - i.cx) * z / i.fx, (rows - i.cy) * z / i.fy, z], axis=1)
    return np.median(points, axis=0)


def send_with_depth(harness, scene, encoding: str, depth_offset_ns: int = 0, depth_scene=None,
                    names=('mask', 'segmentation')):
    """Publish camera_info and a depth image, then the colour frame; return its outputs.

    ``depth_scene``: where depth and camera_info come from, when not from ``scene``.
    """
    depth_scene = depth_scene or scene
    camera = harness.camera
    assert camera.wait_for_subscriber()
    stamp = camera.node.get_clock().now().to_msg()
    depth = depth_image(depth_scene.depth_mm() if encoding == '16UC1' else depth_scene.depth_m,
                        encoding)
    depth.header.stamp.sec = stamp.sec
    depth.header.stamp.nanosec = stamp.nanosec + depth_offset_ns
    depth.header.frame_id = 'camera_optical'
    info = camera_info(depth_scene)
    info.header = depth.header
    harness.info_pub.publish(info)
    harness.depth_pub.publish(depth)
    # The node's depth callback runs on the same executor; give it the depth before the frame.
    deadline_counter = harness.node.camera().depth.pairing.counters
    before = deadline_counter.depth_received
    assert camera.wait_for(lambda: deadline_counter.depth_received > before, 10)
    key = camera.publish(encode_frame(scene.rgb, 'rgb8'), stamp=stamp)
    outputs = camera.wait_outputs(key, names=names)
    assert outputs is not None, 'no output for the frame'
    return outputs


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_frames_paired_with_depth_carry_3d_in_metres(depth_node, scene, encoding):
    segmentation = send_with_depth(depth_node, scene, encoding)['segmentation']
    assert segmentation.has_depth
    assert segmentation.depth_stamp == segmentation.header.stamp
    assert len(segmentation.centroids_3d) == 1
    centroid = segmentation.centroids_3d[0]
    expected = whole_frame_median(scene, encoding)
    np.testing.assert_allclose([centroid.x, centroid.y, centroid.z], expected, atol=0.002)
    assert segmentation.depth_pixel_count[0] == int((scene.depth_m > 0).sum())
    low, high = segmentation.extent_min_3d[0], segmentation.extent_max_3d[0]
    assert low.z < centroid.z < high.z


def test_a_frame_without_matching_depth_gets_nan_and_is_counted(depth_node, scene):
    counters = depth_node.node.camera().depth.pairing.counters
    before = counters.frames_without_depth
    segmentation = send_with_depth(depth_node, scene, '16UC1',
                                   depth_offset_ns=500_000_000)['segmentation']
    assert not segmentation.has_depth
    assert np.isnan([segmentation.centroids_3d[0].x, segmentation.centroids_3d[0].z]).all()
    assert counters.frames_without_depth == before + 1
    values = {kv.key: kv.value for kv in depth_node.node.diagnostic_status().values}
    assert int(values['depth_frames_without_depth']) >= 1


def test_points_and_markers_when_subscribed(depth_node, scene):
    send_with_depth(depth_node, scene, '32FC1')
    harness = depth_node
    with harness.extra_ready:
        assert harness.extra_ready.wait_for(
            lambda: {'points', 'markers'} <= set(harness.extra), 10)
    cloud = harness.extra['points']
    assert cloud.header.frame_id == 'camera_optical' and cloud.point_step == 16
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'label', 'instance']
    points = np.frombuffer(bytes(cloud.data), dtype=np.float32).reshape(-1, 4)[:, :3]
    # Each point's instance: 0 (none) or k, the k-th instance of the segmentation message.
    owners = np.frombuffer(bytes(cloud.data), dtype=np.uint16).reshape(-1, 8)[:, 7]
    assert owners.max() >= 1 and (owners > 0).mean() > 0.5
    expected = int((scene.depth_m[::2, ::2] > 0).sum())
    assert cloud.width == len(points) == expected
    assert np.isfinite(points).all() and (points[:, 2] > 0).all()
    markers = harness.extra['markers'].markers
    assert markers[0].action == Marker.DELETEALL  # last frame's markers go
    assert [m.type for m in markers[1:]] == [Marker.SPHERE, Marker.CUBE, Marker.TEXT_VIEW_FACING]
    assert markers[3].text == 'the table' and markers[1].header.frame_id == 'camera_optical'


def test_segment_service_returns_the_3d_centroid_of_the_latest_frame(depth_node, scene):
    send_with_depth(depth_node, scene, '16UC1')
    response = depth_node.call('segment', Segment.Request(prompts=['the table']))
    assert response.success, response.message
    assert response.segmentation.has_depth
    centroid = response.segmentation.centroids_3d[0]
    np.testing.assert_allclose([centroid.x, centroid.y, centroid.z],
                               whole_frame_median(scene, '16UC1'), atol=0.002)


def test_refused_depth_inputs_are_counted_and_the_node_goes_on(depth_node, scene):
    counters = depth_node.node.camera().depth.pairing.counters
    bad = depth_image(scene.depth_mm(), '16UC1')
    bad.is_bigendian = 1
    depth_node.depth_pub.publish(bad)
    zero_focal = camera_info(scene)
    zero_focal.k = [0.0] * 9
    depth_node.info_pub.publish(zero_focal)
    assert depth_node.camera.wait_for(lambda: counters.depth_rejected >= 2, 10)
    # A depth image of another size than the colour frame: no 3D, a counted refusal.
    before = counters.frames_depth_refused
    small = render_scene(4, 160, 120)
    segmentation = send_with_depth(depth_node, scene, '16UC1', depth_scene=small)['segmentation']
    assert not segmentation.has_depth
    assert counters.frames_depth_refused == before + 1
    segmentation = send_with_depth(depth_node, scene, '16UC1')['segmentation']
    assert segmentation.has_depth, 'the node is still pairing depth'


def test_a_refinement_guided_by_depth_gets_the_frames_own_depth(depth_node, scene):
    """refine_depth_weight > 0: the node refines with the depth paired with the frame, as the
    engine does given that depth, and takes the frame's 3D targets from the same image."""
    harness = depth_node
    engine, prompts = harness.node._engine, harness.node.prompt_set.prompts
    metres = depth_in_metres(scene.depth_mm(), '16UC1', harness.node.get_parameter(
        'max_depth').value)
    assert harness.set_parameter('refine', 'guided').successful
    confidences = {}
    for weight in (0.0, 3.0):
        assert harness.set_parameter('refine_depth_weight', weight).successful
        outputs = send_with_depth(harness, scene, '16UC1', names=('confidence', 'segmentation'))
        confidences[weight] = image_to_array(outputs['confidence'])
        assert outputs['segmentation'].has_depth
        expected = engine.segment(scene.rgb, prompts, threshold=0.0,
                                  refine=RefineSettings('guided', depth_weight=weight),
                                  depth_m=metres if weight > 0 else None)
        np.testing.assert_array_equal(confidences[weight], expected.confidence)
    assert np.abs(confidences[3.0] - confidences[0.0]).max() > 1e-3, 'depth changed nothing'
    # Paired once a frame, before segmenting it when the refinement needs it.
    assert harness.node.camera().depth.pairing.counters.frames_paired == 2
