"""The clipseg node in process: real rclpy over loopback DDS, the tiny CLIPSeg model."""

import platform
import time

from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
import torch

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core import options
from clipseg_ros.core.refine import RefineSettings
from clipseg_ros.main import keep_freed_memory
from clipseg_ros.node import ClipSegNode
from node_harness import (RunningNode, TEST_BACKEND, encode_frame, rgb_frame,
                          tiny_model_overrides)


@pytest.fixture
def running(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir)
    yield harness
    harness.close()


def text_request(*prompts):
    return SetTextPrompts.Request(prompts=list(prompts))


@pytest.mark.parametrize('width, height, encoding', [
    (640, 480, 'rgb8'), (320, 240, 'bgr8'), (101, 37, 'mono8'), (64, 200, 'rgba8'),
    (33, 17, 'bgra8'),
])
def test_outputs_match_input_header_size_and_encodings(running, width, height, encoding):
    frame = encode_frame(rgb_frame(width, height), encoding)
    outputs = running.send_and_wait(frame)
    mask, confidence, overlay = outputs['mask'], outputs['confidence'], outputs['overlay']
    segmentation = outputs['segmentation']
    for image in (mask, confidence, overlay):
        assert (image.width, image.height) == (width, height)
        assert image.header.frame_id == 'camera_optical'
        assert image.header.stamp == frame.header.stamp
    assert (mask.encoding, confidence.encoding, overlay.encoding) == ('mono8', '32FC1', 'rgb8')
    assert segmentation.header == frame.header
    labels = image_to_array(mask)
    probabilities = image_to_array(confidence)
    assert labels.max() <= 2
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    assert segmentation.labels == ['a red square', 'sky']
    assert segmentation.prompt_version == running.node.prompt_set.version
    counts = [int((labels == k).sum()) for k in (1, 2)]
    assert list(segmentation.pixel_count) == counts
    assert len(segmentation.boxes) == len(segmentation.centroids) == 2
    for k, box in enumerate(segmentation.boxes, start=1):
        if counts[k - 1]:
            ys, xs = np.nonzero(labels == k)
            assert (box.x_offset, box.y_offset) == (xs.min(), ys.min())
            assert (box.width, box.height) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert segmentation.centroids[k - 1].x == pytest.approx(xs.mean())
            assert segmentation.centroids[k - 1].z == 0.0


def test_background_where_below_threshold_and_live_threshold(running):
    frame = encode_frame(rgb_frame(80, 60), 'rgb8')
    assert running.set_parameter('threshold', 0.0).successful
    everything = image_to_array(running.send_and_wait(frame)['mask'])
    assert (everything > 0).all(), 'threshold 0 labels every pixel'
    assert running.set_parameter('threshold', 1.0).successful
    outputs = running.send_and_wait(frame)
    confidence = image_to_array(outputs['confidence'])
    labels = image_to_array(outputs['mask'])
    assert not labels.any(), 'threshold 1 labels nothing'
    assert confidence.max() <= 1.0
    assert outputs['segmentation'].threshold == pytest.approx(1.0)
    rejected = running.set_parameter('threshold', 1.5)
    assert not rejected.successful and rejected.reason
    assert running.node.get_parameter('threshold').value == 1.0
    for bad_resolution in (100, 8):
        assert not running.set_parameter('resolution', bad_resolution).successful
    assert running.node.get_parameter('resolution').value == 64
    assert running.set_parameter('resolution', 96).successful
    assert running.send_and_wait(frame)['mask'].width == 80
    assert not running.set_parameter('model', 'other').successful, 'model is read-only'


def test_prompt_changes_while_frames_flow_show_in_prompt_version(running):
    frame = encode_frame(rgb_frame(64, 48), 'rgb8')
    first = running.send_and_wait(frame)['segmentation']
    response = running.call('text', text_request('mug', 'table', 'hand'))
    assert response.success, response.message
    assert response.prompt_version == first.prompt_version + 1
    second = running.send_and_wait(frame)['segmentation']
    assert second.prompt_version == response.prompt_version
    assert second.labels == ['mug', 'table', 'hand']
    assert len(second.max_confidence) == 3


def make_mask(width, height, box=None):
    mask = np.zeros((height, width), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
    return encode_frame(np.dstack([mask] * 3), 'mono8')


def test_image_prompt_replace_and_append(running):
    support = encode_frame(rgb_frame(90, 70, seed=3), 'bgr8')
    request = SetImagePrompt.Request(label='red square', image=support,
                                     mask=make_mask(90, 70, (20, 15, 45, 35)), append=False)
    response = running.call('image', request)
    assert response.success, response.message
    assert running.node.prompt_set.labels == ['red square']
    request = SetImagePrompt.Request(label='', image=support, append=True)  # no mask: whole image
    response = running.call('image', request)
    assert response.success, response.message
    labels = running.node.prompt_set.labels
    assert labels[0] == 'red square' and labels[1].startswith('image_prompt_')
    segmentation = running.send_and_wait(encode_frame(rgb_frame(50, 40), 'rgb8'))['segmentation']
    assert segmentation.labels == labels
    assert segmentation.prompt_version == response.prompt_version


def invalid_requests(max_prompts):
    support = encode_frame(rgb_frame(40, 30), 'rgb8')
    truncated = encode_frame(rgb_frame(40, 30), 'rgb8')
    truncated.data = truncated.data[:-7]
    yuv = encode_frame(rgb_frame(40, 30), 'rgb8')
    yuv.encoding = 'yuv422_yuy2_nonexistent'
    return [
        ('text', text_request(), 'no prompts'),
        ('text', text_request('mug', '   '), 'empty'),
        ('text', text_request(*[f'p{i}' for i in range(max_prompts + 1)]), 'max_prompts'),
        ('text', text_request('x' * 5000), 'longer'),
        ('image', SetImagePrompt.Request(image=yuv), 'encoding'),
        ('image', SetImagePrompt.Request(image=truncated), 'expected step'),
        ('image', SetImagePrompt.Request(image=Image()), 'empty'),
        ('image', SetImagePrompt.Request(image=support, mask=make_mask(40, 30)), 'selects no'),
        ('image', SetImagePrompt.Request(image=support, mask=make_mask(41, 30, (0, 0, 5, 5))),
         'mask is 41x30'),
        ('image', SetImagePrompt.Request(image=support, mask=support), 'mono8'),
    ]


def test_invalid_requests_are_refused_and_change_nothing(running):
    before = running.node.prompt_set
    max_prompts = running.node.get_parameter('max_prompts').value
    for which, request, reason in invalid_requests(max_prompts):
        response = running.call(which, request)
        assert not response.success, reason
        assert reason in response.message, (reason, response.message)
        assert response.prompt_version == before.version
        assert running.node.prompt_set is before
    for request, reason in [
        (Segment.Request(prompts=['']), 'empty'),
        (Segment.Request(image=encode_frame(rgb_frame(4, 4), 'rgb8'), prompts=['']), 'empty'),
    ]:
        response = running.call('segment', request)
        assert not response.success and reason in response.message
    # max_prompts may not drop below the prompts in force
    assert not running.set_parameter('max_prompts', 1).successful


def test_segment_service_on_given_image_and_latest_frame(running):
    response = running.call('segment', Segment.Request())
    assert not response.success and 'no camera frame' in response.message

    given = encode_frame(rgb_frame(72, 40), 'rgb8')
    given.header.frame_id = 'support_camera'
    response = running.call('segment', Segment.Request(image=given, prompts=['wall']))
    assert response.success, response.message
    assert (response.mask.width, response.mask.height) == (72, 40)
    assert response.confidence.encoding == '32FC1'
    assert response.segmentation.labels == ['wall']
    assert response.segmentation.prompt_version == 0, 'one-off prompts are no prompt set'
    assert response.segmentation.header.frame_id == 'support_camera'
    assert running.node.prompt_set.labels == ['a red square', 'sky'], 'one-off prompts only'

    frame = encode_frame(rgb_frame(30, 20), 'bgr8')
    running.send_and_wait(frame)
    response = running.call('segment', Segment.Request())
    assert response.success, response.message
    assert response.mask.header.stamp == frame.header.stamp
    assert response.segmentation.labels == ['a red square', 'sky']
    labels = image_to_array(response.mask)
    assert list(response.segmentation.pixel_count) == [int((labels == k).sum()) for k in (1, 2)]


def test_malformed_frames_are_dropped_and_the_next_good_one_is_processed(running):
    assert running.camera.wait_for_subscriber()
    bad_frames = []
    frame = encode_frame(rgb_frame(20, 10), 'rgb8')
    frame.data = frame.data[:5]
    bad_frames.append(frame)
    frame = encode_frame(rgb_frame(20, 10), 'rgb8')
    frame.encoding = '16UC1_unknown'
    bad_frames.append(frame)
    bad_frames.append(Image(width=0, height=0, encoding='rgb8'))
    frame = Image(width=50000, height=50000, encoding='rgb8', step=150000)
    frame.data = b'\0' * 10
    bad_frames.append(frame)
    # One at a time: the camera subscription keeps only the newest frame (depth 1).
    for count, bad in enumerate(bad_frames, start=1):
        running.camera.publish(bad)
        assert running.camera.wait_for(lambda: running.node.counters.rejected == count, 5)
    good = encode_frame(rgb_frame(20, 10), 'rgb8')
    outputs = running.send_and_wait(good)
    assert outputs['mask'].width == 20
    assert running.node.counters.processed == 1


def test_slow_model_drops_frames_instead_of_queueing(running):
    engine = running.node._engine
    real_segment = engine.segment_batch

    def slow_segment(*args, **kwargs):
        time.sleep(0.3)
        return real_segment(*args, **kwargs)

    engine.segment_batch = slow_segment
    assert running.camera.wait_for_subscriber()
    frame = encode_frame(rgb_frame(64, 48), 'rgb8')
    keys = []
    for _ in range(30):  # 30 Hz for one second against a model slower than 3 Hz
        keys.append(running.camera.publish(frame))
        time.sleep(1 / 30)
    processed_when_camera_stopped = running.node.counters.processed
    last = running.camera.wait_outputs(keys[-1], names=('mask',), timeout=30.0)
    assert last is not None, 'the newest frame is always processed'
    counters = running.node.counters
    # No queue: once the camera stops, at most the frame in progress and the newest one are
    # processed; a queue would work through every frame it had kept.
    assert counters.processed - processed_when_camera_stopped <= 2
    assert counters.dropped > 0
    assert counters.processed + counters.dropped <= counters.received
    assert counters.processed < 15


def test_inference_fault_drops_one_frame_and_the_node_goes_on(running):
    engine = running.node._engine
    real_segment = engine.segment_batch
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('CUDA out of memory (injected)')
        return real_segment(*args, **kwargs)

    engine.segment_batch = failing_once
    assert running.camera.wait_for_subscriber()
    first = running.camera.publish(encode_frame(rgb_frame(32, 24), 'rgb8'))
    assert running.camera.wait_for(lambda: running.node.counters.failed == 1, 10)
    assert first not in running.camera.received['mask']
    outputs = running.send_and_wait(encode_frame(rgb_frame(32, 24), 'rgb8'))
    assert outputs['mask'].width == 32
    assert 'injected' in running.node.counters.last_error
    engine.segment = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('boom'))
    response = running.call('segment', Segment.Request(image=encode_frame(rgb_frame(8, 8),
                                                                          'rgb8')))
    assert not response.success and 'boom' in response.message


def diagnostic_values(status):
    return {kv.key: kv.value for kv in status.values}


def test_diagnostics_report_rates_counts_and_stale_camera(running):
    assert running.set_parameter('stale_image_timeout', 60.0).successful
    frame = encode_frame(rgb_frame(32, 24), 'rgb8')
    for _ in range(3):
        running.send_and_wait(frame)
    status = running.node.diagnostic_status()
    values = diagnostic_values(status)
    assert status.level == DiagnosticStatus.OK, status.message
    assert int(values['frames_processed']) >= 3
    assert float(values['processing_rate_hz']) > 0.0
    assert float(values['input_rate_hz']) > 0.0
    assert values['device'] == 'cpu'
    # The back end the harness asked for, its precision and the CPU's features.
    assert values['runtime'].startswith(TEST_BACKEND) and 'cpu: ' in values['runtime']
    # auto: torch's default, less a core for ROS from 4 cores on (2 cores here -> 2)
    expected_threads = options.cpu_thread_count(0)
    assert values['cpu_threads'] == str(expected_threads) and \
        torch.get_num_threads() == expected_threads
    assert values['prompt_count'] == '2'
    assert float(values['last_inference_ms']) > 0.0
    assert running.set_parameter('stale_image_timeout', 0.2).successful
    time.sleep(0.4)
    stale = running.node.diagnostic_status()
    assert stale.level == DiagnosticStatus.WARN and 'no camera frame' in stale.message
    # and it reaches /diagnostics
    assert running.camera.wait_for(lambda: any(
        s.name.startswith('/clipseg') for a in running.camera.diagnostics for s in a.status), 5)


def test_explicit_cpu_threads_are_applied_at_configure(ros_context, tiny_model_dir):
    before = torch.get_num_threads()
    harness = RunningNode(ros_context, tiny_model_dir, cpu_threads=3)
    try:
        assert torch.get_num_threads() == 3
        values = diagnostic_values(harness.node.diagnostic_status())
        assert values['cpu_threads'] == '3'
        harness.send_and_wait(encode_frame(rgb_frame(32, 24), 'rgb8'))  # still segments
    finally:
        harness.close()
        torch.set_num_threads(before)


@pytest.mark.skipif(not platform.libc_ver()[0] == 'glibc', reason='mallopt is glibc-only')
def test_allocator_settings_are_accepted_by_glibc():
    # clipseg_node's main() calls this before anything is allocated; glibc refuses bad values
    assert keep_freed_memory()


def break_model_folder(folder, tiny_model_dir, cause):
    """Make `folder` an unloadable model of the given kind; return a text the error must name."""
    import shutil
    if cause == 'missing':
        return str(folder)
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / 'model.safetensors'
    if cause == 'corrupt safetensors':
        weights.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header')
        return 'corrupt'
    weights.rename(folder / 'pytorch_model.bin')  # pickle-only folder
    return 'pickle'


@pytest.mark.parametrize('cause', ['missing', 'corrupt safetensors', 'pickle only'])
def test_unloadable_model_fails_configure_and_can_be_configured_again(ros_context, tmp_path,
                                                                      tiny_model_dir, cause):
    import shutil
    folder = tmp_path / 'model'
    named = break_model_folder(folder, tiny_model_dir, cause)
    node = ClipSegNode(context=ros_context,
                       parameter_overrides=tiny_model_overrides(folder, autostart=False))
    try:
        assert node.autostart_if_enabled()  # autostart off: nothing to do
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        status = node.diagnostic_status()
        assert status.level == DiagnosticStatus.ERROR
        assert named in status.message and 'model not loaded' in status.message
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tiny_model_dir, folder)  # the cause is fixed
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.diagnostic_status().level != DiagnosticStatus.ERROR
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.diagnostic_status().level == DiagnosticStatus.ERROR
    finally:
        node.destroy_node()


def test_cuda_requested_without_cuda_fails_configure_clearly(ros_context, tiny_model_dir):
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA; the refusal is for machines without it')
    node = ClipSegNode(context=ros_context, parameter_overrides=tiny_model_overrides(
        tiny_model_dir, device='cuda', autostart=False))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'CUDA' in node.diagnostic_status().message
    finally:
        node.destroy_node()


def test_compressed_transport(ros_context, tiny_model_dir):
    import cv2
    harness = RunningNode(ros_context, tiny_model_dir, compressed=True)
    try:
        ok, jpeg = cv2.imencode('.jpg', rgb_frame(48, 36)[:, :, ::-1])
        msg = CompressedImage(format='jpeg')
        msg.data = jpeg.tobytes()
        outputs = harness.send_and_wait(msg)
        assert (outputs['mask'].width, outputs['mask'].height) == (48, 36)
        assert outputs['mask'].header.stamp == msg.header.stamp
        garbage = CompressedImage(format='jpeg')
        garbage.data = b'\xff\xd8not really a jpeg'
        harness.camera.publish(garbage)
        assert harness.camera.wait_for(lambda: harness.node.counters.rejected == 1, 5)
    finally:
        harness.close()


def test_overlay_can_be_switched_off_live(running):
    frame = encode_frame(rgb_frame(40, 30), 'rgb8')
    assert running.send_and_wait(frame)['overlay'].encoding == 'rgb8'
    assert running.set_parameter('publish_overlay', False).successful
    names = ('mask', 'confidence', 'segmentation')
    first = running.send_and_wait(frame, names=names)
    running.send_and_wait(frame, names=names)  # by now any overlay of the first has arrived
    key = (first['mask'].header.stamp.sec, first['mask'].header.stamp.nanosec)
    assert key not in running.camera.received['overlay']
    assert len(running.camera.received['mask']) == len(running.camera.received['overlay']) + 2


def test_worker_survives_a_failure_outside_inference_and_diagnostics_escalate(running):
    real_publish = running.node.camera().outputs.publish
    running.node.camera().outputs.publish = \
        lambda *args, **kwargs: (_ for _ in ()).throw(ValueError('broken'))
    frame = encode_frame(rgb_frame(24, 16), 'rgb8')
    for count in range(1, 4):
        running.camera.publish(frame)
        assert running.camera.wait_for(lambda: running.node.counters.failed == count, 10)
    status = running.node.diagnostic_status()
    assert status.level == DiagnosticStatus.ERROR and 'broken' in status.message
    running.node.camera().outputs.publish = real_publish
    assert running.send_and_wait(frame)['mask'].width == 24, 'the worker is still alive'
    assert running.node.diagnostic_status().level != DiagnosticStatus.ERROR


def test_frames_while_inactive_are_not_processed_later(running):
    node = running.node
    frame = encode_frame(rgb_frame(24, 16), 'rgb8')
    running.send_and_wait(frame)
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    before = (node.counters.processed, node.counters.dropped)
    stale = running.camera.publish(frame)
    assert running.camera.wait_for(lambda: node.counters.received == 2, 10)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    running.send_and_wait(frame)
    assert stale not in running.camera.received['mask']
    assert (node.counters.processed, node.counters.dropped) == (before[0] + 1, before[1])
    # the inactive frame is still the latest one for ~/segment until the fresh one came
    assert node._worker.latest('') is not None


def test_deactivate_interrupts_the_rate_limit_wait(running):
    assert running.set_parameter('max_rate_hz', 0.001).successful  # one frame per 1000 s
    frame = encode_frame(rgb_frame(24, 16), 'rgb8')
    running.send_and_wait(frame)
    running.camera.publish(frame)  # waits in the rate limit
    assert running.camera.wait_for(lambda: running.node.counters.received == 2, 10)
    worker_thread = running.node._worker._thread
    assert running.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert not worker_thread.is_alive()
    assert running.node.counters.processed == 1


def test_refinement_is_on_by_default_changes_at_runtime_and_none_gives_bilinear(running):
    rgb = rgb_frame(96, 72)
    frame = encode_frame(rgb, 'rgb8')
    engine, prompts = running.node._engine, running.node.prompt_set.prompts

    def published():
        outputs = running.send_and_wait(frame)
        return image_to_array(outputs['mask']), image_to_array(outputs['confidence'])

    # On by default (docs/refinement.md): the engine's outputs with the default refinement.
    assert running.node.get_parameter('refine').value == 'guided'
    labels, confidence = published()
    default = engine.segment(rgb, prompts, threshold=0.3, refine=RefineSettings())
    np.testing.assert_array_equal(labels, default.labels)
    np.testing.assert_array_equal(confidence, default.confidence)
    assert running.set_parameter('refine', 'none').successful
    labels, confidence = published()
    plain = engine.segment(rgb, prompts, threshold=0.3)
    np.testing.assert_array_equal(labels, plain.labels)
    np.testing.assert_array_equal(confidence, plain.confidence)
    assert np.abs(default.confidence - plain.confidence).max() > 1e-3, 'none refined too'
    assert running.set_parameter('refine', 'guided').successful
    assert running.set_parameter('refine_radius', 0.8).successful
    labels, confidence = published()
    refined = engine.segment(rgb, prompts, threshold=0.3,
                             refine=RefineSettings('guided', radius=0.8))
    np.testing.assert_array_equal(labels, refined.labels)
    np.testing.assert_array_equal(confidence, refined.confidence)
    assert np.abs(confidence - plain.confidence).max() > 1e-3, 'refinement changed nothing'
    for name, bad in (('refine', 'bilateral'), ('refine_radius', 0.0),
                      ('refine_epsilon', 2.0), ('refine_depth_weight', -1.0)):
        refused = running.set_parameter(name, bad)
        assert not refused.successful and refused.reason
    assert running.node.get_parameter('refine_radius').value == 0.8
    assert published()[0].shape == (72, 96), 'the node goes on after refused values'
