"""qos_reliability auto: the installed node's inputs follow the camera's reliability.

Node and camera run in processes of their own, as a launch file and a camera driver do, and
neither has the Fast DDS profile: the case where a best-effort subscription loses large frames.
"""

import json
import subprocess
import sys
import threading
import time

from clipseg_ros import launch_args
from diagnostic_msgs.msg import DiagnosticArray
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
import yaml
from node_harness import encode_frame, rgb_frame
from test_subprocess_node import (environment_without_profile, fast_params_file,
                                  launched_command, stop)
from test_signals import wait_until


@pytest.fixture
def node_without_profile(tiny_model_dir, tmp_path):
    """Start the installed node as launch does with use_fastdds_profile:=false."""
    started = []

    def start(namespace: str, **parameters):
        params_file = fast_params_file(tmp_path)
        content = yaml.safe_load(params_file.read_text())
        content['/**/clipseg']['ros__parameters'].update(parameters)
        params_file.write_text(yaml.safe_dump(content))
        environ = environment_without_profile()
        plan = launch_args.plan({'params_file': str(params_file), 'model': str(tiny_model_dir),
                                 'device': 'cpu', 'namespace': namespace,
                                 'use_fastdds_profile': 'false'}, environ=environ)
        assert plan.env == {}
        directory = tmp_path / namespace
        directory.mkdir()
        log_path = directory / 'node.log'
        with open(log_path, 'w') as log:
            process = subprocess.Popen(launched_command(plan, directory), stdout=log,
                                       stderr=subprocess.STDOUT, env={**environ, **plan.env})
        started.append(process)
        return process, log_path

    yield start
    for process in started:
        stop(process)


def run_probe(namespace: str, **options) -> dict:
    """tools/camera_probe.py in a process of its own, without the profile; its JSON result."""
    command = [sys.executable, '-m', 'clipseg_ros.tools.camera_probe',
               '--topic', f'/{namespace}/image', '--node', f'/{namespace}/clipseg']
    for name, value in options.items():
        command += [f'--{name}', str(value)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=environment_without_profile(), text=True, timeout=300)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_auto_receives_every_frame_of_a_reliable_camera(node_without_profile):
    """10 Hz 640x480 rgb8, reliable, between processes: every frame reaches the node."""
    process, log_path = node_without_profile('qos_auto')
    result = run_probe('qos_auto', reliability='reliable', expect='reliable', size='640x480',
                       rate=10, frames=100)
    assert 'error' not in result, (result, log_path.read_text())
    assert result['subscription'] == 'reliable'
    assert result['received'] == result['sent'] == 100, (result, log_path.read_text())
    assert process.poll() is None


class Watcher:
    """This process's view of the node: its image subscriptions and its /diagnostics."""

    def __init__(self, node, namespace: str) -> None:
        self.node = node
        self.topic = f'/{namespace}/image'
        self.status_name = f'/{namespace}/clipseg: segmentation'
        self.values: dict[str, str] = {}
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == self.status_name:
                self.values = {item.key: item.value for item in status.values}

    def subscriptions(self) -> list[ReliabilityPolicy]:
        return [info.qos_profile.reliability
                for info in self.node.get_subscriptions_info_by_topic(self.topic)
                if info.node_name == 'clipseg']


@pytest.fixture
def watcher_node(ros_context):
    node = rclpy.create_node('qos_watcher', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown()
    thread.join(timeout=5)
    node.destroy_node()


def publish_for(publisher, seconds: float, rate_hz: float = 10.0) -> None:
    frame = encode_frame(rgb_frame(64, 48), 'rgb8')
    for _ in range(int(seconds * rate_hz)):
        publisher.publish(frame)
        time.sleep(1.0 / rate_hz)


def test_auto_follows_the_publishers_and_keeps_the_counters(node_without_profile,
                                                            watcher_node):
    process, log_path = node_without_profile('qos_switch')
    watcher = Watcher(watcher_node, 'qos_switch')
    assert wait_until(lambda: watcher.subscriptions() == [ReliabilityPolicy.BEST_EFFORT]), \
        log_path.read_text()  # no publisher yet: best effort, which matches any
    reliable = watcher_node.create_publisher(
        Image, watcher.topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    assert wait_until(lambda: watcher.subscriptions() == [ReliabilityPolicy.RELIABLE], 30.0), \
        log_path.read_text()
    publish_for(reliable, 2.0)
    assert wait_until(lambda: int(watcher.values.get('frames_received', 0)) > 0, 30.0)
    assert watcher.values['image_reliability'] == 'reliable'
    received = int(watcher.values['frames_received'])
    best_effort = watcher_node.create_publisher(
        Image, watcher.topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert wait_until(lambda: watcher.subscriptions() == [ReliabilityPolicy.BEST_EFFORT],
                      30.0), log_path.read_text()
    publish_for(best_effort, 2.0)
    # The same camera's counters go on: the swap kept the node's state.
    assert wait_until(lambda: int(watcher.values['frames_received']) > received, 30.0)
    assert watcher.values['image_reliability'] == 'best_effort'
    assert watcher.values['qos_incompatible_events'] == '0'
    assert 'subscribing best_effort' in log_path.read_text()
    assert process.poll() is None


def test_forced_reliable_against_best_effort_cameras_warns_once(node_without_profile,
                                                                watcher_node):
    process, log_path = node_without_profile('qos_forced', qos_reliability='reliable')
    watcher = Watcher(watcher_node, 'qos_forced')
    assert wait_until(lambda: watcher.subscriptions() == [ReliabilityPolicy.RELIABLE]), \
        log_path.read_text()
    publishers = [watcher_node.create_publisher(
        Image, watcher.topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        for _ in range(2)]
    for publisher in publishers:
        publish_for(publisher, 1.0)
    assert wait_until(lambda: int(watcher.values.get('qos_incompatible_events', 0)) >= 2, 30.0), \
        (watcher.values, log_path.read_text())
    warnings = [line for line in log_path.read_text().splitlines() if 'incompatible' in line]
    assert len(warnings) == 1, log_path.read_text()
    assert 'WARN' in warnings[0] and 'set it to auto' in warnings[0], warnings[0]
    assert watcher.values['frames_received'] == '0'
    assert process.poll() is None
