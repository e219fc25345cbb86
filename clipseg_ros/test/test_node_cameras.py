"""Several cameras served by one clipseg node: own topics and headers, one prompt set, turns.

Real rclpy over loopback DDS: the node is configured with `cameras`, a test node publishes
frames on each camera's `c/image` and collects its `c/mask`, `c/segmentation`, ... outputs.
"""

import threading
import time

from clipseg_ros.node import ClipSegNode
from clipseg_ros.tools.drive import CameraStream
from clipseg_ros_interfaces.srv import Segment, SetTextPrompts
from diagnostic_msgs.msg import DiagnosticStatus
from node_harness import (BackgroundSpin, call_service, encode_frame, rgb_frame,
                          tiny_model_overrides)
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image

# A slow camera's frame is processed before the next one is sent: it waits at most one
# frame of each other camera (the scheduler's turn), far less than its period here.
SLOW_CAMERA_PERIOD_S = 0.5
INJECTED_INFERENCE_S = 0.05


class CamerasHarness:
    """A clipseg node serving ``cameras``, and one CameraStream per camera on a test node."""

    def __init__(self, context, model_dir, cameras, **overrides):
        self.node = ClipSegNode(context=context, parameter_overrides=tiny_model_overrides(
            model_dir, cameras=list(cameras), **overrides))
        self.test_node = rclpy.create_node('cameras_test', context=context)
        self.streams = {name: CameraStream(self.test_node, f'{name}/image', output_namespace=name,
                                           keep_outputs=True)
                        for name in cameras}
        self.all_masks = {name: [] for name in cameras}
        for name in cameras:  # every mask on the topic, not only those matching a sent stamp
            self.test_node.create_subscription(Image, f'{name}/mask',
                                               self.all_masks[name].append, 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.test_node)
        assert self.node.autostart_if_enabled()
        self.spin = BackgroundSpin(self.executor)
        for stream in self.streams.values():
            assert stream.wait_for_subscriber()

    def send(self, camera, rgb, frame_id, encoding='rgb8'):
        """Publish a frame on a camera; return its outputs (all four)."""
        stream = self.streams[camera]
        key = stream.publish(encode_frame(rgb, encoding), frame_id=frame_id)
        outputs = stream.wait_outputs(key)
        assert outputs is not None, f'no outputs for camera {camera}'
        return outputs

    def call(self, service_type, name, request):
        client = self.test_node.create_client(service_type, f'/clipseg/{name}')
        try:
            return call_service(self.test_node, client, request)
        finally:
            self.test_node.destroy_client(client)

    def close(self):
        self.spin.stop()
        self.node.destroy_node()
        self.test_node.destroy_node()


@pytest.fixture
def cameras_node(ros_context, tiny_model_dir):
    made = []

    def make(cameras, **overrides):
        made.append(CamerasHarness(ros_context, tiny_model_dir, cameras, **overrides))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def test_two_cameras_each_get_their_own_outputs_and_headers(cameras_node):
    harness = cameras_node(['head', 'wrist'])
    topics = {name for name, _ in harness.node.get_topic_names_and_types()}
    assert {'/head/image', '/head/mask', '/head/segmentation', '/wrist/image',
            '/wrist/overlay', '/wrist/confidence'} <= topics
    assert not {'/image', '/mask'} & topics
    head = harness.send('head', rgb_frame(64, 48, seed=1), 'head_optical')
    wrist = harness.send('wrist', rgb_frame(40, 30, seed=2), 'wrist_optical')
    for outputs, frame_id, size in ((head, 'head_optical', (64, 48)),
                                    (wrist, 'wrist_optical', (40, 30))):
        for name in ('mask', 'confidence', 'overlay'):
            assert outputs[name].header.frame_id == frame_id
            assert (outputs[name].width, outputs[name].height) == size
        assert outputs['segmentation'].header.frame_id == frame_id
    assert head['mask'].header.stamp != wrist['mask'].header.stamp
    # Nothing of one camera leaked onto the other's topics.
    assert {m.header.frame_id for m in harness.all_masks['head']} == {'head_optical'}
    assert {m.header.frame_id for m in harness.all_masks['wrist']} == {'wrist_optical'}
    # Counted after its outputs went out: wait for the worker to get there.
    assert harness.streams['head'].wait_for(
        lambda: [harness.node.camera_counters(c).processed for c in ('head', 'wrist')] == [1, 1])


def test_with_depth_each_camera_has_its_own_depth_inputs_and_3d_outputs(cameras_node):
    harness = cameras_node(['head', 'wrist'], use_depth=True)
    topics = dict(harness.node.get_topic_names_and_types())
    for camera in ('head', 'wrist'):
        assert topics[f'/{camera}/depth'] == ['sensor_msgs/msg/Image']
        assert topics[f'/{camera}/camera_info'] == ['sensor_msgs/msg/CameraInfo']
        assert topics[f'/{camera}/points'] == ['sensor_msgs/msg/PointCloud2']
        assert topics[f'/{camera}/markers'] == ['visualization_msgs/msg/MarkerArray']
    assert harness.node.camera('head').depth is not harness.node.camera('wrist').depth
    # Without a depth image, each camera's segmentation still comes, marked without depth.
    outputs = harness.send('wrist', rgb_frame(40, 30), 'wrist_optical')
    assert not outputs['segmentation'].has_depth


def test_a_prompt_change_reaches_all_three_cameras(cameras_node):
    cameras = ['head', 'wrist', 'base/left']
    harness = cameras_node(cameras)
    for index, name in enumerate(cameras):
        outputs = harness.send(name, rgb_frame(48, 36, seed=index), f'{name}_optical')
        assert outputs['segmentation'].labels == ['a red square', 'sky']
    response = harness.call(SetTextPrompts, 'set_text_prompts',
                            SetTextPrompts.Request(prompts=['cup', 'bowl', 'plate']))
    assert response.success, response.message
    for index, name in enumerate(cameras):
        outputs = harness.send(name, rgb_frame(48, 36, seed=10 + index), f'{name}_optical')
        assert outputs['segmentation'].labels == ['cup', 'bowl', 'plate']
        assert outputs['segmentation'].prompt_version == response.prompt_version
        assert int(max(outputs['mask'].data)) <= 3


@pytest.mark.parametrize('batch_cameras', [False, True])
def test_a_fast_camera_does_not_starve_a_slow_one(cameras_node, batch_cameras):
    """
    Inference is made slower than the fast camera's period, so the fast camera always has a
    frame waiting; the slow camera's frames must still all be processed, none dropped (one
    camera a turn, or all due cameras in one batch).
    """
    harness = cameras_node(['fast', 'slow'], batch_cameras=batch_cameras)
    engine = harness.node._engine
    real_segment = engine.segment_batch

    def slow_segment(*args, **kwargs):
        time.sleep(INJECTED_INFERENCE_S)
        return real_segment(*args, **kwargs)

    engine.segment_batch = slow_segment
    stop = threading.Event()
    fast_frame = encode_frame(rgb_frame(48, 36, seed=3), 'rgb8')

    def flood():
        while not stop.is_set():
            harness.streams['fast'].publish(fast_frame, frame_id='fast_optical')
            time.sleep(INJECTED_INFERENCE_S / 5)

    flooder = threading.Thread(target=flood)
    flooder.start()
    slow_keys = []
    try:
        for index in range(6):
            slow_keys.append(harness.streams['slow'].publish(
                encode_frame(rgb_frame(40, 30, seed=index), 'rgb8'), frame_id='slow_optical'))
            time.sleep(SLOW_CAMERA_PERIOD_S)
        slow = harness.streams['slow']
        assert slow.wait_for(lambda: all('mask' in slow.records[k].arrivals for k in slow_keys),
                             timeout=30.0)
    finally:
        stop.set()
        flooder.join()
    fast_counters = harness.node.camera_counters('fast')
    slow_counters = harness.node.camera_counters('slow')
    assert slow_counters.processed == len(slow_keys) and slow_counters.dropped == 0
    assert fast_counters.dropped > 0, 'the fast camera was meant to outrun the model'
    assert fast_counters.processed > len(slow_keys), 'the fast camera got its turns too'


def test_a_malformed_frame_on_one_camera_does_not_disturb_the_other(cameras_node):
    harness = cameras_node(['head', 'wrist'])
    broken = encode_frame(rgb_frame(40, 30), 'rgb8')
    broken.data = broken.data[:100]  # far shorter than step x height
    unsupported = encode_frame(rgb_frame(40, 30), 'rgb8')
    unsupported.encoding = '64FC4'
    wrist_counters = harness.node.camera_counters('wrist')
    # One at a time: the subscription keeps only the newest frame.
    for count, bad in enumerate((broken, unsupported), start=1):
        harness.streams['wrist'].publish(bad, frame_id='wrist_optical')
        assert harness.streams['wrist'].wait_for(lambda: wrist_counters.rejected == count, 10.0)
    head = harness.send('head', rgb_frame(64, 48), 'head_optical')
    assert head['mask'].width == 64
    assert harness.node.camera_counters('head').rejected == 0
    assert harness.send('wrist', rgb_frame(40, 30), 'wrist_optical')['mask'].width == 40
    assert harness.streams['wrist'].wait_for(lambda: wrist_counters.processed == 1)
    statuses = {s.name.rsplit(': ', 1)[1]: s for s in harness.node.diagnostic_statuses()}
    assert statuses['camera head'].level == DiagnosticStatus.OK
    values = {kv.key: kv.value for kv in statuses['camera wrist'].values}
    assert values['frames_rejected'] == '2' and values['frames_processed'] == '1'


def test_segment_service_takes_a_camera_name(cameras_node):
    harness = cameras_node(['head', 'wrist'])
    response = harness.call(Segment, 'segment', Segment.Request(camera='wrist'))
    assert not response.success
    assert response.message == "no image given and no camera frame received from camera " \
                               "'wrist' yet"
    harness.send('head', rgb_frame(64, 48), 'head_optical')
    harness.send('wrist', rgb_frame(40, 30), 'wrist_optical')
    wrist = harness.call(Segment, 'segment', Segment.Request(camera='wrist'))
    assert wrist.success, wrist.message
    assert (wrist.mask.width, wrist.mask.header.frame_id) == (40, 'wrist_optical')
    first = harness.call(Segment, 'segment', Segment.Request())  # '' = the first camera
    assert (first.mask.width, first.mask.header.frame_id) == (64, 'head_optical')
    unknown = harness.call(Segment, 'segment', Segment.Request(camera='tail'))
    assert not unknown.success
    assert unknown.message == "no camera 'tail': this node serves 'head', 'wrist'"


def test_diagnostics_give_the_engine_and_each_camera_a_status(cameras_node):
    harness = cameras_node(['head', 'wrist', 'base'])
    harness.send('head', rgb_frame(48, 36), 'head_optical')
    harness.send('head', rgb_frame(48, 36, seed=5), 'head_optical')
    harness.send('wrist', rgb_frame(48, 36), 'wrist_optical')
    assert harness.streams['wrist'].wait_for(
        lambda: harness.node.camera_counters('wrist').processed == 1)
    statuses = harness.node.diagnostic_statuses()
    assert [s.name for s in statuses] == ['/clipseg: engine', '/clipseg: camera head',
                                          '/clipseg: camera wrist', '/clipseg: camera base']
    values = [{kv.key: kv.value for kv in s.values} for s in statuses]
    assert values[0]['cameras'] == 'head, wrist, base' and values[0]['device'] == 'cpu'
    assert values[0]['frames_processed'] == '3'
    assert [v['frames_processed'] for v in values[1:]] == ['2', '1', '0']
    assert statuses[0].level == DiagnosticStatus.OK
    assert statuses[3].level == DiagnosticStatus.WARN  # the base camera sent nothing
    assert 'no camera frame' in statuses[3].message


def test_a_batch_the_device_cannot_take_is_run_frame_by_frame(cameras_node):
    """An inference failing for several frames at once (out of memory, say) falls back to one
    frame at a time: every camera's frame is still processed, and no failure is counted."""
    harness = cameras_node(['head', 'wrist'])
    engine = harness.node._engine
    real_segment = engine.segment_batch
    batch_sizes = []

    def both_cameras_received_a_second_frame() -> bool:
        return [harness.node.camera_counters(c).received for c in ('head', 'wrist')] == [2, 1]

    def no_batches(images, *args, **kwargs):
        batch_sizes.append(len(images))
        if len(images) > 1:
            raise RuntimeError('CUDA out of memory (injected)')
        if len(batch_sizes) == 1:  # holds the worker, so the next frames of both wait together
            streams['head'].wait_for(both_cameras_received_a_second_frame, 10.0)
        return real_segment(images, *args, **kwargs)

    engine.segment_batch = no_batches
    streams = harness.streams
    streams['head'].publish(encode_frame(rgb_frame(48, 36), 'rgb8'), frame_id='head_optical')
    assert streams['head'].wait_for(lambda: len(batch_sizes) == 1, 10.0)
    keys = {name: streams[name].publish(encode_frame(rgb_frame(40, 30, seed=4), 'rgb8'),
                                        frame_id=f'{name}_optical')
            for name in ('head', 'wrist')}
    for name, key in keys.items():
        assert streams[name].wait_outputs(key, names=('mask',)) is not None, name
    assert 2 in batch_sizes, f'the two frames never waited together: {batch_sizes}'
    assert [harness.node.camera_counters(c).failed for c in ('head', 'wrist')] == [0, 0]


def test_diagnostics_name_the_cameras_before_configure(ros_context, tiny_model_dir):
    node = ClipSegNode(context=ros_context, parameter_overrides=tiny_model_overrides(
        tiny_model_dir, cameras=['head', 'wrist'], autostart=False))
    try:
        statuses = node.diagnostic_statuses()
        assert [s.name for s in statuses] == ['/clipseg: engine', '/clipseg: camera head',
                                              '/clipseg: camera wrist']
        assert all(s.level == DiagnosticStatus.ERROR for s in statuses)  # not configured
    finally:
        node.destroy_node()


@pytest.mark.parametrize('cameras, problem', [
    (['head', 'head'], 'camera names must differ'),
    (['', 'wrist'], "'' (the unnamed camera) cannot be mixed"),
    (['9lives'], "camera name '9lives' is not a relative ROS name"),
])
def test_invalid_camera_lists_fail_configure_with_the_reason(ros_context, tiny_model_dir,
                                                             cameras, problem):
    node = ClipSegNode(context=ros_context, parameter_overrides=tiny_model_overrides(
        tiny_model_dir, cameras=cameras, autostart=False))
    try:
        assert node.trigger_configure() != TransitionCallbackReturn.SUCCESS
        assert problem in node.diagnostic_status().message
    finally:
        node.destroy_node()
