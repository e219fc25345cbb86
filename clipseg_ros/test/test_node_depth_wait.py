"""
Every frame with its depth: a colour frame waits (at most depth_wait) for the depth image of
its stamp and a camera_info, in either arrival order, apart from the other cameras.

DepthPairing's readiness alone, then the node in process over loopback DDS with the tiny
random model, which answers in milliseconds (as the full model does on a GPU), so nothing but
the wait makes a frame find its depth.
"""

import array
import time

from clipseg_ros.depth_input import DepthPairing
from clipseg_ros.tools.scenes import render_scene
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from test_node_cameras import CamerasHarness

WIDTH, HEIGHT = 160, 120


@pytest.fixture(scope='module')
def scene():
    return render_scene(4, WIDTH, HEIGHT)


def stamped(msg, stamp_ns: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = 'camera_optical'
    return msg


def depth_msg(scene, stamp_ns: int = 0) -> Image:
    depth = np.ascontiguousarray(scene.depth_mm())
    msg = Image(height=depth.shape[0], width=depth.shape[1], encoding='16UC1',
                step=depth.strides[0])
    msg.data = array.array('B', depth.tobytes())
    return stamped(msg, stamp_ns)


def info_msg(scene, stamp_ns: int = 0) -> CameraInfo:
    i = scene.intrinsics
    info = CameraInfo(width=i.width, height=i.height)
    info.k = [i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0]
    return stamped(info, stamp_ns)


def header_at(stamp_ns: int):
    return stamped(Image(), stamp_ns).header


# ------------------------------------------------------------------ pairing readiness, no ROS

MS = 1_000_000


def test_a_frame_is_ready_once_its_depth_and_a_camera_info_are_there(scene):
    pairing = DepthPairing()
    frame = header_at(1000 * MS)
    assert not pairing.ready_for(frame, 0.02)  # nothing yet
    assert pairing.offer_depth(depth_msg(scene, 1000 * MS)) is None
    assert not pairing.ready_for(frame, 0.02)  # no camera_info yet
    assert pairing.offer_camera_info(info_msg(scene)) is None
    assert pairing.ready_for(frame, 0.02)
    # The nearest within depth_max_delay will do; one beyond it will not, while it may come.
    assert pairing.ready_for(header_at(1015 * MS), 0.02)
    assert not pairing.ready_for(header_at(1025 * MS), 0.02)


def test_a_frame_whose_depth_was_lost_does_not_wait_once_later_depth_arrived(scene):
    pairing = DepthPairing()
    pairing.offer_camera_info(info_msg(scene))
    pairing.offer_depth(depth_msg(scene, 1000 * MS))
    pairing.offer_depth(depth_msg(scene, 1066 * MS))  # the depth of 1033 ms never came
    assert pairing.ready_for(header_at(1033 * MS), 0.02)  # it never will: go without
    assert not pairing.ready_for(header_at(1100 * MS), 0.02)  # a newer frame still waits
    # Out of order: an older depth image arriving last does not make newer frames give up.
    pairing.offer_depth(depth_msg(scene, 900 * MS))
    assert not pairing.ready_for(header_at(1100 * MS), 0.02)
    pairing.clear()
    assert not pairing.ready_for(header_at(1033 * MS), 0.02)


# ------------------------------------------------------------------ the node, over DDS


class DepthCamera:
    """Frames, depth and camera_info of one camera published from the harness's test node."""

    def __init__(self, node, stream, scene, prefix: str = ''):
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.stream, self.scene = stream, scene
        self.clock = node.get_clock()
        self.depth_pub = node.create_publisher(Image, prefix + 'depth', qos)
        self.info_pub = node.create_publisher(CameraInfo, prefix + 'camera_info', qos)
        self.frame = encode_frame(scene.rgb, 'rgb8')
        assert stream.wait_for_subscriber()
        for publisher in (self.depth_pub, self.info_pub):
            deadline = time.monotonic() + 10.0
            while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert publisher.get_subscription_count() > 0

    def now_ns(self) -> int:
        return self.clock.now().nanoseconds

    def send_frame(self, stamp_ns: int) -> tuple:
        return self.stream.publish(self.frame, stamp=stamped(Image(), stamp_ns).header.stamp)

    def send_depth(self, stamp_ns: int) -> None:
        self.info_pub.publish(info_msg(self.scene, stamp_ns))
        self.depth_pub.publish(depth_msg(self.scene, stamp_ns))

    def segmentation(self, key, timeout: float = 30.0):
        outputs = self.stream.wait_outputs(key, names=('segmentation',), timeout=timeout)
        assert outputs is not None, 'no output for the frame'
        return outputs['segmentation']


@pytest.fixture
def depth_wait_node(ros_context, tiny_model_dir):
    """A single-camera node with depth; its depth_wait is set by the test."""
    harness = RunningNode(ros_context, tiny_model_dir, use_depth=True, threshold=0.0,
                          prompts=['the table'])
    harness.depth_camera = DepthCamera(harness.camera.node, harness.camera,
                                       render_scene(4, WIDTH, HEIGHT))
    yield harness
    harness.close()


def diagnostics(harness) -> dict[str, str]:
    return {kv.key: kv.value for kv in harness.node.diagnostic_status().values}


@pytest.mark.parametrize('delay_ms', [0, 10, 25, 50])
def test_depth_after_its_frame_is_waited_for(depth_wait_node, delay_ms):
    assert depth_wait_node.set_parameter('depth_wait', 1.0).successful
    camera = depth_wait_node.depth_camera
    for _ in range(3):
        stamp = camera.now_ns()
        key = camera.send_frame(stamp)
        time.sleep(delay_ms / 1000.0)
        camera.send_depth(stamp)
        segmentation = camera.segmentation(key)
        assert segmentation.has_depth
        assert segmentation.depth_stamp == segmentation.header.stamp
        assert np.isfinite(segmentation.centroids_3d[0].z)
    counters = depth_wait_node.node.counters
    assert counters.inputs_timed_out == 0
    assert depth_wait_node.node.camera().depth.pairing.counters.frames_paired == 3
    values = diagnostics(depth_wait_node)
    assert values['depth_wait_p99_ms'] != 'none' and values['depth_wait_timeouts'] == '0'


def test_depth_before_its_frame_pairs_every_frame(depth_wait_node):
    camera = depth_wait_node.depth_camera
    keys = []
    for _ in range(10):
        stamp = camera.now_ns()
        camera.send_depth(stamp)
        keys.append(camera.send_frame(stamp))  # at once: the executor may take either first
        camera.segmentation(keys[-1])
    assert all(camera.segmentation(key).has_depth for key in keys)
    assert depth_wait_node.node.counters.inputs_timed_out == 0


def test_depth_that_never_arrives_lets_the_frame_go_after_the_wait_counted(depth_wait_node):
    harness = depth_wait_node
    assert harness.set_parameter('depth_wait', 0.3).successful
    camera, pairing = harness.depth_camera, harness.node.camera().depth.pairing
    segmentation = camera.segmentation(camera.send_frame(camera.now_ns()))
    assert not segmentation.has_depth and np.isnan(segmentation.centroids_3d[0].z)
    assert harness.node.counters.inputs_timed_out == 1
    assert pairing.counters.frames_without_depth == 1
    values = diagnostics(harness)
    assert values['depth_wait_timeouts'] == '1'
    assert float(values['depth_wait_p99_ms']) >= 300.0  # it waited the whole wait
    # The depth stream is down: the next frames go at once, not after another wait each.
    assert harness.set_parameter('depth_wait', 5.0).successful
    for _ in range(2):
        assert not camera.segmentation(camera.send_frame(camera.now_ns()), 4.0).has_depth
    assert harness.node.counters.inputs_timed_out == 1
    # Depth is back: frames wait for it again.
    camera.send_depth(camera.now_ns())
    assert camera.stream.wait_for(
        lambda: pairing.counters.depth_received == 1 and pairing.has_camera, 10)
    stamp = camera.now_ns()
    key = camera.send_frame(stamp)
    time.sleep(0.05)
    camera.send_depth(stamp)
    assert camera.segmentation(key).has_depth
    assert harness.node.counters.inputs_timed_out == 1


def test_a_frame_replaced_while_waiting_is_dropped_and_the_newer_one_gets_its_depth(
        depth_wait_node):
    harness = depth_wait_node
    assert harness.set_parameter('depth_wait', 5.0).successful
    camera, counters = harness.depth_camera, harness.node.counters
    first, second = camera.now_ns(), camera.now_ns() + 33 * MS
    first_key = camera.send_frame(first)
    # The image subscription keeps one sample: each frame is taken before the next is sent.
    assert camera.stream.wait_for(lambda: counters.received == 1, 10)
    second_key = camera.send_frame(second)
    assert camera.stream.wait_for(lambda: counters.received == 2, 10)
    camera.send_depth(first)   # too late: its frame was replaced
    camera.send_depth(second)
    segmentation = camera.segmentation(second_key)
    assert segmentation.has_depth and segmentation.depth_stamp == segmentation.header.stamp
    # Counted after its outputs went out: wait for the worker to get there.
    assert camera.stream.wait_for(lambda: counters.processed == 1, 10)
    assert counters.dropped == 1
    assert camera.stream.outputs_for(first_key, ('segmentation',))['segmentation'] is None


def test_one_cameras_late_depth_never_holds_the_other_camera(ros_context, tiny_model_dir,
                                                              scene):
    harness = CamerasHarness(ros_context, tiny_model_dir, ['head', 'wrist'], use_depth=True,
                             depth_wait=5.0, threshold=0.0, prompts=['the table'])
    try:
        head, wrist = (DepthCamera(harness.test_node, harness.streams[name], scene, f'{name}/')
                       for name in ('head', 'wrist'))
        head_stamp = head.now_ns()
        head_key = head.send_frame(head_stamp)  # its depth is late
        node = harness.node
        assert head.stream.wait_for(lambda: node.camera_counters('head').received == 1, 10)
        for _ in range(5):
            stamp = wrist.now_ns()
            wrist.send_depth(stamp)
            key = wrist.send_frame(stamp)
            assert wrist.segmentation(key).has_depth
        # Five wrist frames out, each with its depth, none dropped, while head's still waits.
        assert node.camera_counters('wrist').dropped == 0
        assert head.stream.outputs_for(head_key, ('segmentation',))['segmentation'] is None
        head.send_depth(head_stamp)
        assert head.segmentation(head_key).has_depth
        assert node.camera_counters('head').inputs_timed_out == 0
    finally:
        harness.close()
