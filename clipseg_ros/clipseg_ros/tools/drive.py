"""Drive a running clipseg node with a synthetic camera: for the demo, soak and benchmarks.

`start_node_process` starts the installed executable with the command line the launch file
builds (clipseg_ros.launch_args), plus parameter overrides; `CameraStream` publishes frames at a
fixed rate and records, per frame, when each output arrived and how long the engine took.
"""

import array
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

from clipseg_ros import launch_args
import numpy as np
from clipseg_ros_interfaces.msg import Segmentation
from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

OUTPUTS = ('mask', 'confidence', 'overlay', 'segmentation')


def use_large_image_profile() -> None:
    """Give this process (and node processes it starts) the profile the launch file gives.

    Call before rclpy.init. The camera side needs it as much as the node: large best-effort
    frames cross between processes whole only with it (docs/robots.md, "Large images"). A profile
    already set in the environment wins, as in the launch file.
    """
    os.environ.update(launch_args.node_environment(os.environ, use_profile=True))


def synthetic_frame(width: int, height: int, index: int) -> np.ndarray:
    """A scene with a red ball moving over a blue-green gradient, deterministic per index."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack([0.2 * cols / width * 255, 0.6 * rows / height * 255 + 60,
                      np.full_like(rows, 170)], axis=2)
    centre_x = width * (0.3 + 0.4 * np.sin(index / 15.0) ** 2)
    centre_y = height * 0.55
    radius = min(width, height) * 0.15
    ball = (cols - centre_x) ** 2 + (rows - centre_y) ** 2 <= radius ** 2
    frame[ball] = (220, 30, 30)
    return frame.astype(np.uint8)


def rgb_image_msg(rgb: np.ndarray) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8', step=rgb.shape[1] * 3)
    msg.data = array.array('B', rgb.tobytes())
    return msg


def installed_node_command(params: dict[str, str], image_topic: str,
                           namespace: str = '') -> list[str]:
    """The command line clipseg.launch.py runs, plus ``-p`` overrides for these tools."""
    plan = launch_args.plan({'namespace': namespace, 'image': image_topic})
    command = launch_args.node_command(launch_args.installed_executable(), plan)
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    return command


def start_node_process(params: dict[str, str], image_topic: str, log_path: Path,
                       namespace: str = '') -> subprocess.Popen:
    with open(log_path, 'w') as log:
        return subprocess.Popen(installed_node_command(params, image_topic, namespace),
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def stop_node_process(process: subprocess.Popen, timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_for_subscription(publisher, timeout: float) -> bool:
    """Wait until `publisher` has a matched subscription; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def service_response(client, request, timeout: float = 30.0):
    """Call a service from a node spun on another thread; its response, or None when none
    came within ``timeout`` seconds."""
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    return future.result() if done.wait(timeout) else None


def spin_until_shutdown(node) -> None:
    """Spin a server node until Ctrl-C or a shutdown, then destroy it and shut rclpy down."""
    try:
        rclpy.spin(node, SingleThreadedExecutor())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


@dataclass
class FrameRecord:
    sent: float
    arrivals: dict[str, float] = field(default_factory=dict)
    inference_s: float | None = None
    outputs: dict[str, object] = field(default_factory=dict)


def stamp_key(header) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


class CameraStream:
    """
    Publish frames on a topic and record, per frame, the clipseg outputs that answer it.

    Outputs are matched to frames by stamp; with ``keep_outputs`` the messages are kept too.
    ``reliability`` is the camera's: BEST_EFFORT is what drivers publish (and what loses large
    frames between processes without the Fast DDS profile).
    """

    def __init__(self, node, image_topic: str, output_namespace: str = '',
                 keep_outputs: bool = False, compressed: bool = False,
                 reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE,
                 listen_to_diagnostics: bool = False):
        self.node = node
        message_type = CompressedImage if compressed else Image
        topic = image_topic + ('/compressed' if compressed else '')
        self.publisher = node.create_publisher(
            message_type, topic, QoSProfile(depth=10, reliability=reliability))
        self.records: dict[tuple, FrameRecord] = {}
        self.diagnostics: list[DiagnosticArray] = []
        self.keep_outputs = keep_outputs
        self._condition = threading.Condition()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        prefix = output_namespace.rstrip('/') + '/' if output_namespace else ''
        for name in OUTPUTS:
            node.create_subscription(Segmentation if name == 'segmentation' else Image,
                                     prefix + name, self._collector(name), qos)
        if listen_to_diagnostics:
            node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                     qos)

    def _collector(self, name: str):
        def collect(msg):
            now = time.monotonic()
            with self._condition:
                record = self.records.get(stamp_key(msg.header))
                if record is None:
                    return
                # inference_s first: readers that poll arrivals without the lock see it set.
                if name == 'segmentation':
                    record.inference_s = float(msg.inference_time)
                record.arrivals[name] = now
                if self.keep_outputs:
                    record.outputs[name] = msg
                self._condition.notify_all()
        return collect

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._condition:
            self.diagnostics.append(msg)
            self._condition.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        """Wait until predicate() holds (checked whenever something arrives)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.1))
        return True

    def wait_for_subscriber(self, timeout: float = 10.0) -> bool:
        return wait_for_subscription(self.publisher, timeout)

    def publish(self, msg, frame_id: str = 'camera_optical', stamp=None) -> tuple:
        """Stamp msg (now, unless a stamp is given), publish it and return its stamp key."""
        stamp = stamp if stamp is not None else self.node.get_clock().now().to_msg()
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id
        key = (stamp.sec, stamp.nanosec)
        with self._condition:
            self.records[key] = FrameRecord(sent=time.monotonic())
        self.publisher.publish(msg)
        return key

    def run(self, frames: Sequence[Image], rate_hz: float, duration_s: float,
            on_tick=None) -> int:
        """Publish frames cyclically at rate_hz for duration_s; return how many were sent."""
        period = 1.0 / rate_hz
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < duration_s:
            self.publish(frames[sent % len(frames)])
            sent += 1
            if on_tick is not None:
                on_tick(sent)
            next_time = start + sent * period
            time.sleep(max(0.0, next_time - time.monotonic()))
        return sent

    def wait_answer(self, key: tuple, name: str = 'mask', timeout: float = 30.0) -> bool:
        return self.wait_for(lambda: name in self.records[key].arrivals, timeout)

    def wait_outputs(self, key: tuple, names: Sequence[str] = OUTPUTS,
                     timeout: float = 30.0) -> dict[str, object] | None:
        """The kept output messages of one frame once all ``names`` arrived, else None."""
        if self.wait_for(lambda: all(n in self.records[key].outputs for n in names), timeout):
            return self.outputs_for(key, names)
        return None

    def outputs_for(self, key: tuple, names: Sequence[str] = OUTPUTS) -> dict[str, object]:
        with self._condition:
            record = self.records.get(key)
            return {name: record.outputs.get(name) if record else None for name in names}

    @property
    def received(self) -> dict[str, dict[tuple, object]]:
        """The kept outputs by name, then by frame stamp."""
        with self._condition:
            return {name: {key: record.outputs[name] for key, record in self.records.items()
                           if name in record.outputs} for name in OUTPUTS}

    def answered(self, name: str = 'segmentation') -> list[FrameRecord]:
        with self._condition:
            return [r for r in self.records.values() if name in r.arrivals]

    def latencies(self, name: str = 'segmentation') -> np.ndarray:
        return np.array([r.arrivals[name] - r.sent for r in self.answered(name)])


def percentile_ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if len(values) else float('nan')
