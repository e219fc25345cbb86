"""
Identities through contact, through the node with its trained miniature model and aligned
depth, in process over loopback DDS and as the installed executable in its own process: two red
circles at one depth approach, touch (one region for about ten frames) and part. Each keeps its
track id; while they touch, the merged instance has no track id and names both tracks, which
are listed as held.
"""

from clipseg_ros.tools.drive import wait_for_subscription
from clipseg_ros.tools.tracking_scenarios import touch_and_part
from node_harness import encode_frame
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from test_node_depth import camera_info, depth_image
from test_node_objects import identity_of, MINI_MODEL, objects_node, send  # noqa: F401
from test_subprocess_node import installed_params_file, launched_node  # noqa: F401
from test_subprocess_node import spinning_camera
import yaml


@pytest.fixture(scope='module')
def contact_frames():
    return touch_and_part(2).frames


def test_two_circles_that_touch_and_part_keep_their_ids_through_the_node(
        objects_node, contact_frames):  # noqa: F811 - the fixture imported above
    ids: dict[int, set[int]] = {}
    merged_frames = 0
    for frame in contact_frames:
        segmentation = send(objects_node, frame.scene)
        seen = [i for i in segmentation.instances if i.seen_this_frame]
        held = {i.track_id for i in segmentation.instances if i.held}
        merged = [i for i in seen if len(i.merged_track_ids)]
        if merged:
            merged_frames += 1
            assert len(merged) == 1 and merged[0].track_id == 0
            assert set(merged[0].merged_track_ids) == held and len(held) == 2
            assert all(not i.seen_this_frame and i.missed_frames == 0
                       for i in segmentation.instances if i.held)
        for instance in seen:
            identity = identity_of(instance, frame)
            if instance.track_id and not instance.merged_track_ids:
                assert identity in (0, 1), 'a tracked instance on no red circle'
                ids.setdefault(identity, set()).add(instance.track_id)
    assert merged_frames >= 5
    assert len(ids) == 2 and all(len(v) == 1 for v in ids.values()), ids
    assert ids[0] != ids[1]
    # Both parts are tracked again at the end, each by its own id.
    assert sorted(i.track_id for i in segmentation.instances if i.seen_this_frame
                  and i.track_id) == sorted(ids[0] | ids[1])


def test_the_installed_node_in_its_own_process_keeps_ids_through_contact(
        ros_context, launched_node, contact_frames, tmp_path):  # noqa: F811 - fixtures
    """The same sequence, to the node started as launch starts it (installed executable)."""
    parameters = yaml.safe_load(installed_params_file().read_text())
    parameters['/**/clipseg']['ros__parameters'].update(
        prompts=['red circle'], threshold=0.3, resolution=0, track_min_frames=2)
    params_file = tmp_path / 'contact.yaml'
    params_file.write_text(yaml.safe_dump(parameters))
    process, log_path, _ = launched_node(params_file=str(params_file), model=MINI_MODEL,
                                         use_depth='true')
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    with spinning_camera(ros_context) as camera:
        depth_pub = camera.node.create_publisher(Image, 'depth', qos)
        info_pub = camera.node.create_publisher(CameraInfo, 'camera_info', qos)
        assert camera.wait_for_subscriber(timeout=60.0), log_path.read_text()
        assert wait_for_subscription(depth_pub, 30.0), log_path.read_text()
        ids: dict[int, set[int]] = {}
        merged_frames = 0
        for frame in contact_frames:
            stamp = camera.node.get_clock().now().to_msg()
            depth = depth_image(frame.scene.depth_mm(), '16UC1')
            depth.header.stamp, depth.header.frame_id = stamp, 'camera_optical'
            info = camera_info(frame.scene)
            info.header = depth.header
            info_pub.publish(info)
            depth_pub.publish(depth)
            key = camera.publish(encode_frame(frame.scene.rgb, 'rgb8'), stamp=stamp)
            outputs = camera.wait_outputs(key, names=('segmentation',), timeout=30.0)
            assert outputs is not None, log_path.read_text()
            instances = outputs['segmentation'].instances
            if any(len(i.merged_track_ids) for i in instances):
                merged_frames += 1
                assert {i.track_id for i in instances if i.held} == {
                    t for i in instances for t in i.merged_track_ids}
            for instance in instances:
                if instance.seen_this_frame and instance.track_id:
                    identity = identity_of(instance, frame)
                    assert identity in (0, 1), 'a tracked instance on no red circle'
                    ids.setdefault(identity, set()).add(instance.track_id)
        assert process.poll() is None, 'node exited'
    assert merged_frames >= 5
    assert len(ids) == 2 and all(len(v) == 1 for v in ids.values()), ids
    assert ids[0] != ids[1]
