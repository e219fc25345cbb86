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
from clipseg_ros.depth_stall import DepthStall
from clipseg_ros.tools.depth_stream import DepthFeed, stream_with_depth
from clipseg_ros.tools.scenes import render_scene
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
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


def test_why_a_frame_has_no_depth_names_the_cause(scene):
    pairing = DepthPairing()
    frame = header_at(1000 * MS)
    assert 'no depth image has arrived' in pairing.why_unpaired(frame, 0.02)
    pairing.offer_depth(depth_msg(scene, 1000 * MS))
    assert 'camera_info' in pairing.why_unpaired(frame, 0.02)
    pairing.offer_camera_info(info_msg(scene))
    pairing.offer_depth(depth_msg(scene, 0))  # stamped 0: the newest, far off
    reason = pairing.why_unpaired(header_at(2000 * MS), 0.02)
    assert 'nearest of the last 2 is -1000.0 ms' in reason and 'newest -2000.0 ms' in reason


def test_a_stall_ends_only_on_depth_a_frame_sent_during_it_would_have_got_by_waiting():
    stall, depth = DepthStall(), set()
    has_depth = depth.__contains__
    assert not stall.active and not stall.went_at_once(1, 0.0)
    stall.begin(1000, received_at=10.0)
    assert stall.went_at_once(1033, 10.033) and stall.went_at_once(1066, 10.066)
    depth.add(0)  # depth that never pairs (stamp 0, another clock)
    assert not stall.end_if_paired(has_depth, now=10.07, wait_s=0.1)
    depth.add(1000)  # the timed-out frame's own depth, later than the wait
    assert not stall.end_if_paired(has_depth, now=10.2, wait_s=0.1) and stall.active
    stall.went_at_once(1200, 10.2)
    depth.add(1200)  # a frame's depth within the wait: waiting would have paired it
    assert stall.end_if_paired(has_depth, now=10.25, wait_s=0.1)
    assert not stall.active and not stall.went_at_once(1233, 10.233)


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
    # A wait far above loopback delivery: on a loaded 2-core CI host the depth image published
    # just before its frame once reached the node more than the default 0.1 s after it.
    assert depth_wait_node.set_parameter('depth_wait', 2.0).successful
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
    assert pairing.counters.wait_skipped == 2 and diagnostics(harness)['depth_wait_skipped'] == '2'
    # Depth that never pairs with a frame (stamped 1 s off) leaves the stall on.
    camera.send_depth(camera.now_ns() - 1_000_000_000)
    assert camera.stream.wait_for(lambda: pairing.counters.depth_received == 1, 10)
    assert not camera.segmentation(camera.send_frame(camera.now_ns()), 4.0).has_depth
    assert harness.node.counters.inputs_timed_out == 1 and pairing.counters.wait_skipped == 3
    # Depth is back: a frame sent during the stall gets its depth within the wait, so the
    # next frames wait for theirs again.
    stamp = camera.now_ns()
    assert not camera.segmentation(camera.send_frame(stamp), 4.0).has_depth
    camera.send_depth(stamp)
    assert camera.stream.wait_for(lambda: not harness.node.camera().depth.stall.active, 10)
    stamp = camera.now_ns()
    key = camera.send_frame(stamp)
    time.sleep(0.05)
    camera.send_depth(stamp)
    assert camera.segmentation(key).has_depth
    assert harness.node.counters.inputs_timed_out == 1 and pairing.counters.wait_skipped == 4


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
    # Counted after its outputs went out: wait for the worker to get there. The first frame
    # still waits beside the second (three may): if the worker wakes between the two depth
    # images it goes with its own depth, else the second goes and the first is dropped.
    assert camera.stream.wait_for(lambda: counters.processed + counters.dropped == 2, 10)
    if counters.dropped == 1:
        assert camera.stream.outputs_for(first_key, ('segmentation',))['segmentation'] is None
    else:
        first_out = camera.segmentation(first_key)  # waits for its outputs to come in
        assert first_out.has_depth and first_out.depth_stamp == first_out.header.stamp


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


# ------------------------------------------------------------------ streams, over DDS

STREAM_FRAMES, STREAM_HZ = 60, 30.0


def depth_stream(harness, delays, depth_stamp=lambda stamp_ns: stamp_ns):
    """Stream STREAM_FRAMES frames at STREAM_HZ with depth after ``delays``; the result."""
    camera = harness.depth_camera
    feed = DepthFeed(harness.camera.node, 'depth', 'camera_info', camera.scene.depth_mm(),
                     camera.scene.intrinsics)
    assert feed.wait_for_subscribers(10.0)
    result = stream_with_depth(harness.camera, feed, camera.frame, STREAM_FRAMES, STREAM_HZ,
                               delays, settle_s=5.0, depth_stamp=depth_stamp)
    print(f'{result.answered} of {result.sent} answered, {result.with_own_depth} with their '
          f'own depth; {diagnostics(harness)}')
    return result


def test_depth_after_the_next_frame_still_pairs_most_frames(depth_wait_node):
    """30 Hz, depth 40-50 ms late: each frame's depth comes after the next frame."""
    delays = list(np.random.default_rng(1).uniform(0.040, 0.050, STREAM_FRAMES))
    result = depth_stream(depth_wait_node, delays)
    # Without the waiting list: 17 of 60 out, at most 7 with their own depth, the rest timed
    # out. How many go out is the worker's rate, not the wait's: it drops a frame when a newer
    # one is ready (CI on 2 cores processed 11.8 frames/s: 23 of 60 out, all with their own).
    assert result.answered >= 0.25 * result.sent
    assert result.with_own_depth == result.with_depth  # never another frame's depth
    # A depth image held up past the wait on a loaded host costs its frame and the stall's next
    # one; one overwritten in the one-message queue by the next costs its frame. Without the
    # waiting list most frames time out.
    timed_out = depth_wait_node.node.counters.inputs_timed_out
    assert timed_out <= 2
    assert result.answered - result.with_own_depth <= 1 + 2 * timed_out


def test_depth_at_half_the_colour_rate_pairs_the_frames_it_has(depth_wait_node):
    """15 Hz depth for a 30 Hz camera: the frames between depth images have none of their own."""
    delays = [0.010 if index % 2 == 0 else None for index in range(STREAM_FRAMES)]
    result = depth_stream(depth_wait_node, delays)
    # The frames with depth go with it; one between goes when the next depth image shows its
    # own never comes, by when the next frame with depth is ready: it goes instead.
    assert result.with_own_depth >= 0.5 * (STREAM_FRAMES // 2)
    assert result.with_own_depth == result.with_depth
    # All with depth but the last frame (no later depth image shows its own never comes, so it
    # goes after the wait) and a few between: on a loaded host a late publishing thread sends a
    # frame and its depth back to back, and when the node takes the depth first the frame
    # before goes at once, the worker being free (a CI run on 2 cores: 2 of 30). Going at once
    # without cause would send about half without depth.
    between_sent_at_once = result.answered // 10
    assert result.answered - result.with_depth <= 1 + between_sent_at_once
    counters = depth_wait_node.node.counters
    # The last frame's, and one more when a depth image is held up past the wait; a wait per
    # frame between depth images would be about 30.
    assert counters.inputs_timed_out <= 2
    # Counted on the frames that reached the node: a best-effort frame can be lost under load.
    assert counters.dropped >= counters.received // 2 - 1 - between_sent_at_once


@pytest.mark.parametrize('depth_stamp, delay', [
    (lambda stamp_ns: stamp_ns - 1_000_000_000, 0.010),  # a depth clock 1 s behind
    (lambda stamp_ns: 0, 0.010),                          # depth stamped 0
    (lambda stamp_ns: stamp_ns, 0.300)],                  # depth later than depth_wait
    ids=['clock-offset', 'stamp-0', 'later-than-the-wait'])
def test_depth_that_keeps_coming_but_never_pairs_costs_one_wait(depth_wait_node, depth_stamp,
                                                                delay):
    harness = depth_wait_node
    result = depth_stream(harness, [delay] * STREAM_FRAMES, depth_stamp)
    pairing = harness.node.camera().depth.pairing
    assert pairing.counters.depth_received >= STREAM_FRAMES // 2
    assert result.with_depth == 0
    assert harness.node.counters.inputs_timed_out == 1  # then the stall: no wait per image
    # Without the fix: 16 of 60 out; in a full suite run on 2 cores, with the worker at 19
    # frames a second, 35 of 60 (at 11.8 a second, as one CI run measured, about 23).
    assert result.answered >= 0.3 * result.sent
    assert pairing.counters.wait_skipped >= result.answered - 1


def test_deactivate_and_cleanup_while_a_frame_waits(depth_wait_node):
    harness = depth_wait_node
    assert harness.set_parameter('depth_wait', 5.0).successful
    camera, node = harness.depth_camera, harness.node
    key = camera.send_frame(camera.now_ns())
    assert camera.stream.wait_for(lambda: node.counters.received == 1, 10)
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS  # joined, not waited
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.counters.processed == 0 and node.counters.inputs_timed_out == 0
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    # New subscriptions: until they match, a depth image may be lost, so a few tries.
    for _ in range(10):
        stamp = camera.now_ns()
        camera.send_depth(stamp)
        time.sleep(0.05)
        if camera.segmentation(camera.send_frame(stamp)).has_depth:
            break
    else:
        pytest.fail('no frame paired with its depth after the reconfigure')
    assert camera.stream.outputs_for(key, ('segmentation',))['segmentation'] is None


def test_a_shorter_depth_wait_set_live_applies_to_the_waiting_frame(depth_wait_node):
    harness = depth_wait_node
    assert harness.set_parameter('depth_wait', 5.0).successful
    camera, counters = harness.depth_camera, harness.node.counters
    key = camera.send_frame(camera.now_ns())
    assert camera.stream.wait_for(lambda: counters.received == 1, 10)
    assert harness.set_parameter('depth_wait', 0.05).successful
    segmentation = camera.segmentation(key, timeout=4.0)  # sooner than the 5 s wait
    assert not segmentation.has_depth and counters.inputs_timed_out == 1


def test_depth_sent_across_a_qos_swap_arrives_once_each(ros_context, tiny_model_dir, scene):
    """
    qos_reliability auto: the depth subscription starts best effort (no publisher) and swaps to
    reliable when a reliable publisher appears. Depth streamed from the first match on, across
    the swap, reaches the node once per image: none lost, none twice.
    """
    harness = RunningNode(ros_context, tiny_model_dir, use_depth=True, prompts=['the table'])
    try:
        depth_input = harness.node.camera().depth.inputs[0]
        assert depth_input.reliability_name == 'best_effort'
        publisher = harness.camera.node.create_publisher(
            Image, 'depth', QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        assert harness.camera.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
        pairing, base, sent = harness.node.camera().depth.pairing, 10**18, 0
        deadline = time.monotonic() + 15.0
        swapped_at = None
        while time.monotonic() < deadline:
            publisher.publish(depth_msg(scene, base + sent * MS))
            sent += 1
            # The node keeps one depth image: its executor has this long to take each.
            time.sleep(0.05)
            if swapped_at is None and depth_input.reliability_name == 'reliable':
                swapped_at = sent
            if depth_input._retiring is None and swapped_at is not None and \
                    sent >= swapped_at + 20:
                break  # swapped, the old subscription gone, and 20 more sent
        assert swapped_at is not None and depth_input._retiring is None
        assert harness.camera.wait_for(lambda: pairing.counters.depth_received >= sent, 10), \
            (pairing.counters.depth_received, sent)
        time.sleep(0.3)  # a second copy would come in now
        assert pairing.counters.depth_received == sent
    finally:
        harness.close()
