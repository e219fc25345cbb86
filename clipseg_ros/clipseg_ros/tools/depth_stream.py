"""
Drive a clipseg node the way an RGB-D camera does: a colour frame, and its aligned depth image
and camera_info (same stamp) published a random time before or after it, or not at all.

For the depth-wait tests, the fuzz and `bench/depth_wait_bench.py`; counts, per answered frame,
whether it got its own depth.
"""

import array
from collections.abc import Callable
from dataclasses import dataclass
import time

from builtin_interfaces.msg import Time
from clipseg_ros.tools.drive import CameraStream, wait_for_subscription
import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image


def depth_image_msg(depth_mm: np.ndarray) -> Image:
    """A 16UC1 (millimetres) sensor_msgs/Image of an (H, W) uint16 array."""
    depth_mm = np.ascontiguousarray(depth_mm, dtype=np.uint16)
    msg = Image(height=depth_mm.shape[0], width=depth_mm.shape[1], encoding='16UC1',
                step=depth_mm.strides[0])
    msg.data = array.array('B', depth_mm.tobytes())
    return msg


def camera_info_msg(intrinsics) -> CameraInfo:
    """The CameraInfo of a scene's intrinsics (width, height, fx, fy, cx, cy)."""
    i = intrinsics
    return CameraInfo(width=i.width, height=i.height,
                      k=[i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0])


class DepthFeed:
    """A camera's `depth` and `camera_info` publishers (reliable, as the colour stream)."""

    def __init__(self, node, depth_topic: str, info_topic: str, depth_mm: np.ndarray,
                 intrinsics) -> None:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.depth_pub = node.create_publisher(Image, depth_topic, qos)
        self.info_pub = node.create_publisher(CameraInfo, info_topic, qos)
        self.depth = depth_image_msg(depth_mm)
        self.info = camera_info_msg(intrinsics)

    def wait_for_subscribers(self, timeout: float) -> bool:
        return all(wait_for_subscription(p, timeout) for p in (self.depth_pub, self.info_pub))

    def publish(self, stamp, frame_id: str = 'camera_optical') -> None:
        """camera_info, then the depth image, both with ``stamp``."""
        for msg in (self.info, self.depth):
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
        self.info_pub.publish(self.info)
        self.depth_pub.publish(self.depth)


@dataclass
class DepthStreamResult:
    """What came back for a stream of frames with depth."""

    sent: int
    answered: int
    with_own_depth: int   # answered with has_depth and depth_stamp == the frame's stamp
    with_depth: int       # answered with has_depth (any paired depth image)
    latencies_s: np.ndarray

    @property
    def own_depth_share(self) -> float:
        """Of the answered frames, the share with their own depth."""
        return self.with_own_depth / self.answered if self.answered else 0.0

    @property
    def answered_share(self) -> float:
        """Of the frames sent, the share answered (replaced frames are not)."""
        return self.answered / self.sent if self.sent else 0.0


def _time(stamp_ns: int) -> Time:
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def stream_with_depth(camera: CameraStream, feed: DepthFeed, frame: Image, count: int,
                      rate_hz: float, delays_s, settle_s: float = 2.0,
                      depth_stamp: Callable[[int], int] = lambda stamp_ns: stamp_ns
                      ) -> DepthStreamResult:
    """
    Publish ``count`` frames at ``rate_hz``; frame k's depth and camera_info follow it after
    ``delays_s[k]`` seconds (before it when negative; never when None), stamped
    ``depth_stamp(frame stamp ns)`` (the frame's own stamp unless told: another clock, 0).
    Waits up to ``settle_s`` for the last answers; ``camera`` must keep outputs.
    """
    period = 1.0 / rate_hz
    # Stamped at the camera's rate, as a driver stamps exposures, whatever this host's jitter
    # does to the publishing times.
    first_ns = camera.node.get_clock().now().nanoseconds
    stamps = [first_ns + round(index * period * 1e9) for index in range(count)]
    # Each publication at its own time, so depth may come after the next frame or later.
    events = sorted([(index * period, 1, index) for index in range(count)] +
                    [(index * period + delay, 0 if delay < 0 else 2, index)
                     for index, delay in enumerate(delays_s[:count]) if delay is not None])
    keys, start = [None] * count, time.monotonic()
    for at, kind, index in events:
        time.sleep(max(0.0, start + at - time.monotonic()))
        if kind == 1:
            keys[index] = camera.publish(frame, stamp=_time(stamps[index]))
        else:
            feed.publish(_time(depth_stamp(stamps[index])))
    last = keys[-1]
    camera.wait_for(lambda: 'segmentation' in camera.records[last].outputs, settle_s)
    outputs = [camera.outputs_for(key, ('segmentation',))['segmentation'] for key in keys]
    answered = [(key, s) for key, s in zip(keys, outputs) if s is not None]
    own = sum(1 for key, s in answered
              if s.has_depth and (s.depth_stamp.sec, s.depth_stamp.nanosec) == key)
    return DepthStreamResult(sent=count, answered=len(answered), with_own_depth=own,
                             with_depth=sum(1 for _, s in answered if s.has_depth),
                             latencies_s=camera.latencies('segmentation'))
