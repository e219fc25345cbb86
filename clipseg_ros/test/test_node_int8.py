"""
The node with dtype int8 (tiny model, CPU flags faked to have VNNI): unusable calibration
folders fail configure with the reason and leave the node answering; a good folder then
configures, and frames and ~/segment are computed in int8.
"""

import cv2
from clipseg_ros.core import backends
from clipseg_ros.core.cpu_features import CpuFeatures
from clipseg_ros_interfaces.srv import Segment
from diagnostic_msgs.msg import DiagnosticStatus
from node_harness import encode_frame, rgb_frame, RunningNode
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from test_int8 import _bad_folders, needs_int8, needs_native_int8
from clipseg_ros.tools.scenes import render_scene
import torch

WITH_VNNI = CpuFeatures('fake Core with AVX-VNNI', frozenset({'avx2', 'avx_vnni'}))
WITHOUT_VNNI = CpuFeatures('fake Core without VNNI', frozenset({'avx2'}))


def _good_folder(root):
    folder = root / 'frames'
    folder.mkdir()
    for index in range(3):
        rgb = render_scene(7_600_000 + index, 96, 72).rgb
        assert cv2.imwrite(str(folder / f'{index}.jpg'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


@needs_int8
@needs_native_int8
def test_bad_calibration_folders_fail_configure_then_a_good_one_runs_int8(
        ros_context, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, 'host_cpu_features', lambda: WITH_VNNI)
    bad = _bad_folders(tmp_path)
    harness = RunningNode(ros_context, tiny_model_dir, autostart=False, backend='openvino',
                          dtype='int8', int8_calibration=str(bad[0][0]))
    try:
        for folder, reason in bad:
            assert harness.set_parameter('int8_calibration', str(folder)).successful
            assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
            status = harness.node.diagnostic_status()
            assert status.level == DiagnosticStatus.ERROR and reason in status.message
            # Alive: services answer, with the reason.
            response = harness.call('segment', Segment.Request(
                image=encode_frame(rgb_frame(40, 30), 'rgb8')))
            assert not response.success and reason in response.message
        assert harness.set_parameter('int8_calibration', str(_good_folder(tmp_path))).successful
        assert harness.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert harness.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        engine = harness.node._engine
        assert engine.dtype == torch.int8 and engine._network.quantizations == 1
        assert 'int8 (float32 elsewhere)' in engine.runtime_summary
        calls = engine._network.calls
        outputs = harness.send_and_wait(encode_frame(rgb_frame(40, 30), 'rgb8'))
        assert outputs['mask'].width == 40
        response = harness.call('segment', Segment.Request(
            image=encode_frame(rgb_frame(48, 32), 'rgb8')))
        assert response.success and response.mask.width == 48
        assert engine._network.calls >= calls + 2  # both went through the int8 network
    finally:
        harness.close()


@needs_int8
@needs_native_int8
def test_a_live_resolution_change_is_refused_in_int8_and_taken_at_configure(
        ros_context, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, 'host_cpu_features', lambda: WITH_VNNI)
    harness = RunningNode(ros_context, tiny_model_dir, backend='openvino', dtype='int8',
                          int8_calibration=str(_good_folder(tmp_path)))
    try:
        engine = harness.node._engine
        assert engine.dtype == torch.int8
        side, quantizations = engine.resolution, engine._network.quantizations
        result = harness.set_parameter('resolution', side + 32)
        assert not result.successful
        assert 'int8' in result.reason and 'cleanup, set it, then configure' in result.reason
        # Nothing was quantized in the callback, and frames still run at the old size.
        assert engine.resolution == side
        assert engine._network.quantizations == quantizations
        assert harness.send_and_wait(encode_frame(rgb_frame(40, 30), 'rgb8'))['mask'].width == 40
        assert harness.set_parameter('resolution', side).successful  # no change: accepted
        assert harness.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert harness.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert harness.set_parameter('resolution', side + 32).successful
        assert harness.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert harness.node._engine.resolution == side + 32
    finally:
        harness.close()


@needs_int8
def test_int8_without_vnni_fails_configure_with_the_reason(ros_context, tiny_model_dir,
                                                           monkeypatch):
    monkeypatch.setattr(backends, 'host_cpu_features', lambda: WITHOUT_VNNI)
    harness = RunningNode(ros_context, tiny_model_dir, autostart=False, backend='openvino',
                          dtype='int8')
    try:
        assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        message = harness.node.diagnostic_status().message
        assert 'avx_vnni' in message and 'fake Core without VNNI' in message
        assert harness.set_parameter('dtype', 'float32').successful
        assert harness.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    finally:
        harness.close()


def test_int8_on_torch_fails_configure_with_the_reason(ros_context, tiny_model_dir,
                                                      monkeypatch):
    monkeypatch.setattr(backends, 'host_cpu_features', lambda: WITH_VNNI)
    harness = RunningNode(ros_context, tiny_model_dir, autostart=False, backend='torch',
                          dtype='int8')
    try:
        assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert 'not on torch' in harness.node.diagnostic_status().message
    finally:
        harness.close()


@pytest.mark.parametrize('value', ['int4', 'INT 8'])
def test_unknown_dtypes_are_still_refused(ros_context, tiny_model_dir, value):
    harness = RunningNode(ros_context, tiny_model_dir, autostart=False)
    try:
        result = harness.set_parameter('dtype', value)
        assert not result.successful and 'int8' in result.reason  # the choices are listed
    finally:
        harness.close()
