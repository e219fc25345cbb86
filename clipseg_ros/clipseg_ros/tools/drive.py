"""Drive a running clipseg node with a synthetic camera: for the demo, soak and benchmarks.

`start_node_process` starts the installed executable exactly as a launch file would
(`--ros-args --params-file ... -r image:=...`); `CameraStream` publishes frames at a fixed rate
and records, per frame, when each output arrived and how long the engine took.
"""

import array
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from clipseg_ros_interfaces.msg import Segmentation
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

OUTPUTS = ('mask', 'confidence', 'overlay', 'segmentation')


def use_large_image_profile() -> None:
    """Point Fast DDS at the shipped profile with a shared-memory segment for large frames.

    Call before rclpy.init; node processes started afterwards inherit it.  The default segment
    is smaller than one 640x480 rgb8 frame, so such frames would cross between processes as
    UDP fragments, which best-effort readers lose under load.  A value already set wins.
    """
    profile = Path(get_package_share_directory('clipseg_ros')) / 'config' / \
        'fastdds_large_images.xml'
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(profile))


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


def installed_node_command(params: Dict[str, str], image_topic: str,
                           namespace: str = '') -> List[str]:
    """The command line launch would run for clipseg.launch.py (plus parameter overrides)."""
    executable = Path(get_package_prefix('clipseg_ros')) / 'lib' / 'clipseg_ros' / 'clipseg_node'
    params_file = Path(get_package_share_directory('clipseg_ros')) / 'config' / 'clipseg.yaml'
    command = [str(executable), '--ros-args', '-r', '__node:=clipseg']
    if namespace:
        command += ['-r', f'__ns:={namespace}']
    command += ['--params-file', str(params_file)]
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    # The same two remaps as clipseg.launch.py: raw and compressed transport of one camera.
    command += ['-r', f'image:={image_topic}', '-r', f'image/compressed:={image_topic}/compressed']
    return command


def start_node_process(params: Dict[str, str], image_topic: str, log_path: Path,
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


@dataclass
class FrameRecord:
    sent: float
    arrivals: Dict[str, float] = field(default_factory=dict)
    inference_s: Optional[float] = None
    outputs: Dict[str, object] = field(default_factory=dict)


class CameraStream:
    """Publish frames on a topic and record the clipseg outputs that answer them."""

    def __init__(self, node, image_topic: str, output_namespace: str = '',
                 keep_outputs: bool = False, compressed: bool = False):
        self.node = node
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if compressed:
            self.publisher = node.create_publisher(CompressedImage, image_topic + '/compressed',
                                                   qos)
        else:
            self.publisher = node.create_publisher(Image, image_topic, qos)
        self.records: Dict[tuple, FrameRecord] = {}
        self.keep_outputs = keep_outputs
        self._lock = threading.Lock()
        self._sequence = 0
        prefix = output_namespace.rstrip('/') + '/' if output_namespace else ''
        for name in OUTPUTS:
            node.create_subscription(Segmentation if name == 'segmentation' else Image,
                                     prefix + name, self._collector(name), qos)

    def _collector(self, name: str):
        def collect(msg):
            now = time.monotonic()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            with self._lock:
                record = self.records.get(key)
                if record is None:
                    return
                # inference_s first: readers that poll arrivals without the lock see it set.
                if name == 'segmentation':
                    record.inference_s = float(msg.inference_time)
                record.arrivals[name] = now
                if self.keep_outputs:
                    record.outputs[name] = msg
        return collect

    def wait_for_subscriber(self, timeout: float) -> bool:
        return wait_for_subscription(self.publisher, timeout)

    def publish(self, msg, frame_id: str = 'demo_camera_optical') -> tuple:
        self._sequence += 1
        stamp = self.node.get_clock().now().to_msg()
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id
        key = (stamp.sec, stamp.nanosec)
        with self._lock:
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if name in self.records[key].arrivals:
                    return True
            time.sleep(0.02)
        return False

    def answered(self, name: str = 'segmentation') -> List[FrameRecord]:
        with self._lock:
            return [r for r in self.records.values() if name in r.arrivals]

    def latencies(self, name: str = 'segmentation') -> np.ndarray:
        return np.array([r.arrivals[name] - r.sent for r in self.answered(name)])


def percentile_ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if len(values) else float('nan')
