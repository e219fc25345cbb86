"""
The node under a lifecycle manager and under concurrency: configure-time parameters changed
between configures, failed configures that free what they loaded, state reset by cleanup,
callbacks that contain their exceptions.
"""

import json
import threading
import time

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.node import ClipSegNode
from clipseg_ros.tools.tiny_model import build_tokenizer, PREPROCESSOR_CONFIG, tiny_config
from diagnostic_msgs.msg import DiagnosticStatus
from node_harness import encode_frame, rgb_frame, RunningNode, tiny_model_overrides
import pytest
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
import torch
from transformers import CLIPSegForImageSegmentation


@pytest.fixture
def idle_node(ros_context, tiny_model_dir):
    """A node left unconfigured, as a lifecycle manager finds it (autostart off)."""
    node = ClipSegNode(context=ros_context,
                       parameter_overrides=tiny_model_overrides(tiny_model_dir, autostart=False))
    yield node
    node.destroy_node()


def set_parameter(node, name, value) -> SetParametersResult:
    # An empty list says nothing of its element type: name it.
    parameter = Parameter(name, Parameter.Type.STRING_ARRAY, value) if value == [] else \
        Parameter(name, value=value)
    return node.set_parameters([parameter])[0]


@pytest.fixture(scope='module')
def patch32_model_dir(tmp_path_factory):
    """A tiny CLIPSeg with 32-pixel patches: resolutions must be multiples of 32."""
    folder = tmp_path_factory.mktemp('patch32')
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    config.vision_config.patch_size = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPSegForImageSegmentation(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / 'preprocessor_config.json').write_text(json.dumps(PREPROCESSOR_CONFIG))
    return folder


def test_model_changed_between_cleanup_and_configure_takes_effect(idle_node, tiny_model_dir,
                                                                  patch32_model_dir):
    node = idle_node
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node._engine.model_name == str(tiny_model_dir)
    refused = set_parameter(node, 'model', str(patch32_model_dir))
    assert not refused.successful
    assert 'configure' in refused.reason and 'cleanup' in refused.reason
    assert node.get_parameter('model').value == str(tiny_model_dir)
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    for name, value in (('model', str(patch32_model_dir)), ('prompts', ['a cup', 'a mug']),
                        ('input_transport', 'compressed'), ('qos_reliability', 'reliable'),
                        ('device', 'cpu'), ('dtype', 'float32'), ('compile_mode', 'none'),
                        ('cpu_threads', 1)):
        result = set_parameter(node, name, value)
        assert result.successful, (name, result.reason)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node._engine.model_name == str(patch32_model_dir)
    assert node.prompt_set.labels == ['a cup', 'a mug']
    assert node.camera().subscription.topic_name.endswith('/image/compressed')
    assert torch.get_num_threads() == 1
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS


@pytest.mark.parametrize('name, value, reason', [
    ('device', 'gpu', 'device'), ('dtype', 'float8', 'dtype'),
    ('compile_mode', 'tensorrt', 'compile_mode'), ('input_transport', 'theora', 'raw'),
    ('qos_reliability', 'sometimes', 'best_effort'), ('prompts', [], 'no prompts'),
    ('prompts', ['a cup', '  '], 'empty'), ('model', '', 'model'),
])
def test_bad_configure_time_values_are_refused_while_unconfigured(idle_node, name, value,
                                                                  reason):
    before = idle_node.get_parameter(name).value
    result = set_parameter(idle_node, name, value)
    assert not result.successful and reason in result.reason
    assert idle_node.get_parameter(name).value == before


def test_resolution_the_model_cannot_take_is_refused_not_raised(ros_context,
                                                                patch32_model_dir):
    """80 is a multiple of 16 but not of this model's 32-pixel patches."""
    harness = RunningNode(ros_context, patch32_model_dir)
    try:
        result = harness.set_parameter('resolution', 80)
        assert not result.successful and 'patch size 32' in result.reason
        assert harness.node.get_parameter('resolution').value == 64
        assert harness.set_parameter('resolution', 96).successful
        outputs = harness.send_and_wait(encode_frame(rgb_frame(40, 30), 'rgb8'))
        assert outputs['mask'].width == 40, 'the node still runs'
        assert harness.node._engine.resolution == 96
    finally:
        harness.close()


def test_max_prompts_cannot_drop_below_the_prompts_in_force(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir)
    try:
        result = harness.set_parameter('max_prompts', 1)
        assert not result.successful and '2 prompts are in force' in result.reason
        assert harness.node.get_parameter('max_prompts').value == 16
        assert harness.set_parameter('max_prompts', 2).successful
    finally:
        harness.close()


class _FailsAfterLoading(ClipSegEngine):
    """An engine that loads the real model, then fails to embed the initial prompts."""

    instances = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.released = False
        _FailsAfterLoading.instances.append(self)

    def text_prompts(self, texts):
        raise RuntimeError('text encoder failed (injected)')

    def release(self):
        self.released = True
        super().release()


def test_configure_that_fails_after_loading_frees_the_model(ros_context, tiny_model_dir):
    _FailsAfterLoading.instances.clear()
    node = ClipSegNode(context=ros_context, engine_factory=_FailsAfterLoading,
                       parameter_overrides=tiny_model_overrides(tiny_model_dir,
                                                                autostart=False))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert len(_FailsAfterLoading.instances) == 1
        engine = _FailsAfterLoading.instances[0]
        assert engine.released, 'the loaded model must be freed when configure fails'
        assert engine._model is None
        assert node._engine is None
        status = node.diagnostic_status()
        assert status.level == DiagnosticStatus.ERROR and 'injected' in status.message
        # Configure-time parameters can be changed after the failure.
        assert set_parameter(node, 'prompts', ['a cup']).successful
    finally:
        node.destroy_node()


def test_cleanup_forgets_failures_and_stale_frames(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir, stale_image_timeout=60.0)
    node = harness.node
    try:
        frame = encode_frame(rgb_frame(24, 16), 'rgb8')
        harness.send_and_wait(frame)
        real_publish = node.camera().outputs.publish
        node.camera().outputs.publish = \
            lambda *args, **kwargs: (_ for _ in ()).throw(ValueError('broken'))
        for count in range(1, 4):
            harness.camera.publish(frame)
            assert harness.camera.wait_for(lambda: node.counters.failed == count, 10)
        assert node.diagnostic_status().level == DiagnosticStatus.ERROR
        node.camera().outputs.publish = real_publish
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        status = node.diagnostic_status()
        assert status.level == DiagnosticStatus.WARN, status.message
        assert 'no camera frame' in status.message, 'a frame from before cleanup is not news'
        assert node.counters.consecutive_failures == 0 and node.counters.last_error == ''
        assert harness.send_and_wait(frame)['mask'].width == 24
        assert node.diagnostic_status().level == DiagnosticStatus.OK
    finally:
        harness.close()


def test_diagnostics_read_rates_while_the_worker_records_frames(idle_node):
    """The diagnostics timer and the worker thread share the recent-frame times."""
    node = idle_node
    stop = threading.Event()

    def record_frames():
        while not stop.is_set():
            node.counters.process_times.append(time.monotonic())
            node.counters.receive_times.append(time.monotonic())

    writer = threading.Thread(target=record_frames)
    writer.start()
    try:
        deadline = time.monotonic() + 3.0
        reads = 0
        while time.monotonic() < deadline:
            node.diagnostic_status()
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 100


def test_diagnostics_timer_contains_its_exceptions(idle_node, caplog):
    node = idle_node

    def broken_status():
        raise RuntimeError('diagnostics broke (injected)')

    node.diagnostic_statuses = broken_status
    node._publish_diagnostics()  # as the timer calls it: must not raise
    node.diagnostic_statuses = lambda: [DiagnosticStatus(name='restored')]
    node._publish_diagnostics()


def test_parameter_callback_contains_its_exceptions(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir)
    try:
        engine = harness.node._engine

        class Unsettable:
            def __getattr__(self, name):
                return getattr(engine, name)

            def __setattr__(self, name, value):
                raise RuntimeError('cannot apply (injected)')

        harness.node._engine = Unsettable()
        result = harness.set_parameter('resolution', 96)
        assert not result.successful and 'injected' in result.reason
        harness.node._engine = engine
        outputs = harness.send_and_wait(encode_frame(rgb_frame(40, 30), 'rgb8'))
        assert outputs['mask'].width == 40, 'the executor survived'
    finally:
        harness.close()
