"""
Objects through the node, in process over loopback DDS, with the trained miniature model and
aligned depth: over a generated sequence with two red circles (and a green square) the
segmentation messages carry one instance per circle with a track id that does not change, the
instance image numbers them, and ~/segment returns the instances (with the camera's track ids
for its latest frame only).

The miniature model tells colours apart, not shapes, so the named kind's colour is unique in the
scene apart from its duplicates.
"""

from clipseg_ros.conversions import image_to_array
from clipseg_ros.tools.scene_sequences import moving_objects
from clipseg_ros_interfaces.srv import Segment
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from test_node_depth import camera_info, depth_image

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
FRAMES = 16


@pytest.fixture(scope='module')
def frames():
    return moving_objects(seed=2, frames=FRAMES)


@pytest.fixture
def objects_node(ros_context):
    harness = RunningNode(ros_context, MINI_MODEL, resolution=0, threshold=0.3,
                          prompts=['red circle'], use_depth=True, track_min_frames=2)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    harness.depth_pub = harness.camera.node.create_publisher(Image, 'depth', qos)
    harness.info_pub = harness.camera.node.create_publisher(CameraInfo, 'camera_info', qos)
    yield harness
    harness.close()


def send(harness, scene):
    """Depth and camera_info, then the colour frame with the same stamp; its outputs."""
    camera = harness.camera
    assert camera.wait_for_subscriber()
    stamp = camera.node.get_clock().now().to_msg()
    depth = depth_image(scene.depth_mm(), '16UC1')
    depth.header.stamp = stamp
    depth.header.frame_id = 'camera_optical'
    info = camera_info(scene)
    info.header = depth.header
    counters = harness.node.camera().depth.pairing.counters
    before = counters.depth_received
    harness.info_pub.publish(info)
    harness.depth_pub.publish(depth)
    assert camera.wait_for(lambda: counters.depth_received > before, 10)
    key = camera.publish(encode_frame(scene.rgb, 'rgb8'), stamp=stamp)
    outputs = camera.wait_outputs(key, names=('mask', 'segmentation'))
    assert outputs is not None, 'no output for the frame'
    return outputs['segmentation']


def identity_of(instance, frame) -> int | None:
    """The object under an instance's pixel centroid, by the frame's ground truth."""
    u, v = int(round(instance.centroid.x)), int(round(instance.centroid.y))
    for item, identity in zip(frame.scene.objects, frame.identities):
        if item.mask[v, u]:
            return identity
    return None


def test_segmentation_messages_carry_stable_track_ids_for_the_named_objects(
        objects_node, frames):
    ids: dict[int, set[int]] = {}
    for index, frame in enumerate(frames):
        segmentation = send(objects_node, frame.scene)
        seen = [i for i in segmentation.instances if i.seen_this_frame]
        assert len(seen) == 2, [(i.label, i.pixel_count) for i in seen]
        assert all(i.label == 'red circle' and i.prompt_index == 0 for i in seen)
        assert seen[0].score >= seen[1].score
        for instance in seen:
            identity = identity_of(instance, frame)
            assert identity in (0, 1), 'an instance on no red circle'
            item = frame.object(identity)
            assert np.linalg.norm([instance.centroid_3d.x - item.centroid_3d[0],
                                   instance.centroid_3d.y - item.centroid_3d[1],
                                   instance.centroid_3d.z - item.centroid_3d[2]]) < 0.02
            if index >= 1:  # seen in 2 frames: reported
                assert instance.track_id > 0 and instance.track_age_frames == index + 1
                ids.setdefault(identity, set()).add(instance.track_id)
            else:
                assert instance.track_id == 0
    assert len(ids) == 2 and all(len(v) == 1 for v in ids.values()), ids
    assert ids[0] != ids[1]


def test_segment_returns_instances_with_track_ids_only_for_the_latest_frame(
        objects_node, frames):
    for frame in frames[:3]:
        last = send(objects_node, frame.scene)
    tracked = sorted(i.track_id for i in last.instances)
    assert len(tracked) == 2 and all(tracked)
    response = objects_node.call('segment', Segment.Request())
    assert response.success, response.message
    assert sorted(i.track_id for i in response.segmentation.instances) == tracked
    assert all(np.isfinite(i.centroid_3d.z) for i in response.segmentation.instances)
    # Another image (or other prompts): instances, but no track ids.
    image = encode_frame(frames[5].scene.rgb, 'rgb8')
    response = objects_node.call('segment', Segment.Request(image=image))
    assert response.success, response.message
    assert len(response.segmentation.instances) == 2
    assert all(i.track_id == 0 for i in response.segmentation.instances)


def test_the_instance_image_numbers_the_messages_instances(objects_node, frames):
    received = {}
    objects_node.camera.node.create_subscription(
        Image, 'instances', lambda msg: received.setdefault('image', msg),
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    assert objects_node.camera.wait_for(
        lambda: objects_node.node.camera().outputs._wanted('instances'), 10)
    segmentation = send(objects_node, frames[0].scene)
    assert objects_node.camera.wait_for(lambda: 'image' in received, 10)
    image = image_to_array(received['image'])
    assert image.dtype == np.uint16 and received['image'].encoding == 'mono16'
    assert received['image'].header.stamp == segmentation.header.stamp
    for k, instance in enumerate(segmentation.instances):
        assert (image == k + 1).sum() == instance.pixel_count
    assert image.max() == len(segmentation.instances)


def test_tracking_off_gives_instances_without_ids(objects_node, frames):
    assert objects_node.set_parameter('tracking', False).successful
    for frame in frames[:3]:
        segmentation = send(objects_node, frame.scene)
    assert len(segmentation.instances) == 2
    assert all(i.track_id == 0 for i in segmentation.instances)
    assert not objects_node.set_parameter('min_instance_pixels', 0).successful
