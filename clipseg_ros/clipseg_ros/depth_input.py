"""
Aligned depth for a colour frame: recent depth images and the camera's intrinsics kept as they
arrive, whether a frame's depth is there yet, each colour frame paired with the depth image of
its stamp (or the nearest within a delay), every mismatch refused with a reason and counted.
Message types only, no rclpy.
"""

from collections import deque
from dataclasses import dataclass
import threading

from clipseg_ros.core.depth_targets import (
    CameraModel, DEPTH_ENCODINGS, depth_in_metres, prompt_targets, PromptTargets)
import numpy as np

# Depth images kept for pairing: a second of a 30 Hz camera, more than any inference delay.
DEPTH_HISTORY = 30
_BYTES_PER_PIXEL = {'16UC1': 2, 'mono16': 2, '32FC1': 4}


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def depth_image_problem(msg) -> str | None:
    """Why a depth Image cannot be read, or None; checks the layout without the pixels."""
    if msg.encoding not in _BYTES_PER_PIXEL:
        return (f"depth encoding '{msg.encoding}' is not one of {', '.join(DEPTH_ENCODINGS)} "
                '(16UC1 millimetres or 32FC1 metres)')
    if msg.is_bigendian:
        return 'depth image is big-endian; only little-endian depth is read'
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width == 0 or height == 0:
        return f'depth image size {width}x{height} is empty'
    row = width * _BYTES_PER_PIXEL[msg.encoding]
    if step < row or step % _BYTES_PER_PIXEL[msg.encoding]:
        return f'depth step {step} does not hold a row of {width} {msg.encoding} pixels'
    if len(msg.data) != step * height:
        return f'depth data has {len(msg.data)} bytes, expected step * height = {step * height}'
    return None


def depth_array(msg) -> np.ndarray:
    """The (H, W) pixels of a depth Image that passed :func:`depth_image_problem`."""
    dtype = np.uint16 if msg.encoding in ('16UC1', 'mono16') else np.float32
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(msg.data, dtype=np.dtype(dtype).newbyteorder('<')).reshape(
        int(msg.height), int(msg.step) // itemsize)
    return rows[:, :int(msg.width)]


def camera_model(info) -> tuple[CameraModel | None, str | None]:
    """The pinhole model of a CameraInfo message, or None and why it cannot be used."""
    k = list(info.k)
    model = CameraModel(width=int(info.width), height=int(info.height), fx=float(k[0]),
                        fy=float(k[4]), cx=float(k[2]), cy=float(k[5]))
    problem = model.problem()
    if problem is None and (model.width == 0 or model.height == 0):
        problem = f'camera_info size {model.width}x{model.height} is empty'
    return (None, f'camera_info: {problem}') if problem else (model, None)


@dataclass
class DepthCounters:
    """What happened to depth input; read by diagnostics and tests."""

    depth_received: int = 0
    depth_rejected: int = 0        # unreadable depth images and camera_info
    frames_paired: int = 0
    frames_without_depth: int = 0  # no depth image within depth_max_delay of the frame
    frames_depth_refused: int = 0  # a depth image or camera_info that does not fit the frame
    wait_skipped: int = 0  # frames sent without waiting: an earlier frame's wait ran out


@dataclass
class PairedTargets:
    """The 3D targets of one frame and the stamp of the depth image they came from."""

    targets: PromptTargets
    depth_stamp_ns: int | None     # None: no depth paired, targets are NaN
    problem: str | None = None     # why not, when a depth image or camera_info did not fit
    depth_m: np.ndarray | None = None    # the paired depth in metres (for the point cloud)
    camera: CameraModel | None = None


@dataclass
class PairedDepth:
    """The depth image in metres paired with one frame, before or without its labels."""

    depth_stamp_ns: int | None     # None: no depth paired
    depth_m: np.ndarray | None
    camera: CameraModel | None
    problem: str | None = None     # why not, when a depth image or camera_info did not fit


def targets_of(paired: PairedDepth, labels: np.ndarray, prompt_count: int,
               erosion_px: int) -> PairedTargets:
    """The 3D targets of a frame's labels from the depth paired with it."""
    if paired.depth_m is None:
        return PairedTargets(PromptTargets.unknown(prompt_count), None, paired.problem)
    return PairedTargets(
        prompt_targets(labels, paired.depth_m, paired.camera, prompt_count, erosion_px),
        paired.depth_stamp_ns, depth_m=paired.depth_m, camera=paired.camera)


class DepthPairing:
    """Recent depth images and the latest camera model, shared by the callbacks and workers."""

    def __init__(self, history: int = DEPTH_HISTORY) -> None:
        self._lock = threading.Lock()
        self._depth: deque = deque(maxlen=history)
        self._camera: CameraModel | None = None
        self._camera_problem = 'no camera_info received yet'
        self._newest_stamp: int | None = None  # of the depth image that arrived last
        self.counters = DepthCounters()

    def offer_depth(self, msg) -> str | None:
        """Keep a depth image for pairing; return why it was refused, or None."""
        self.counters.depth_received += 1
        problem = depth_image_problem(msg)
        if problem is not None:
            self.counters.depth_rejected += 1
            return problem
        with self._lock:
            self._newest_stamp = stamp_ns(msg.header)
            self._depth.append((self._newest_stamp, msg))
        return None

    @property
    def has_camera(self) -> bool:
        """Whether a usable camera_info has arrived."""
        return self._camera is not None

    def has_depth_for(self, stamp: int, max_delay: float) -> bool:
        """Whether a frame of this stamp (ns) can be paired now: its depth and a camera_info."""
        window = int(max_delay * 1e9)
        with self._lock:
            return self._camera is not None and any(
                abs(depth_stamp - stamp) <= window for depth_stamp, _ in self._depth)

    def ready_for(self, header, max_delay: float) -> bool:
        """
        Whether a frame of this header can be paired now or never will be: a depth image within
        ``max_delay`` of its stamp and a camera_info are there, or the depth image that arrived
        last is stamped later than that window (depth comes in stamp order, so the frame's own
        was lost). False while the frame should wait for its depth.
        """
        stamp = stamp_ns(header)
        if self.has_depth_for(stamp, max_delay):
            return True
        with self._lock:
            # The image that arrived last, not the latest stamp kept: when a bag replayed in a
            # loop jumps back, only the frame at the jump goes without depth; the latest stamp
            # kept would send a second's worth of the new loop's frames without it.
            return self._newest_stamp is not None and \
                self._newest_stamp > stamp + int(max_delay * 1e9)

    def why_unpaired(self, header, max_delay: float) -> str:
        """Why a frame of this header has no depth to pair with now, in words."""
        stamp = stamp_ns(header)
        window = int(max_delay * 1e9)
        with self._lock:
            stamps = [depth_stamp for depth_stamp, _ in self._depth]
            newest, camera_problem = self._newest_stamp, self._camera_problem
            has_camera = self._camera is not None
        if not stamps:
            return 'no depth image has arrived (check the depth topic and its QoS)'
        if any(abs(depth_stamp - stamp) <= window for depth_stamp in stamps) and not has_camera:
            return camera_problem
        nearest = min(stamps, key=lambda depth_stamp: abs(depth_stamp - stamp))
        return (f'no depth image within depth_max_delay ({max_delay * 1e3:.0f} ms) of its stamp:'
                f' the nearest of the last {len(stamps)} is {(nearest - stamp) / 1e6:+.1f} ms '
                f'from it, the newest {(newest - stamp) / 1e6:+.1f} ms (depth later than '
                'depth_wait, or stamped on another clock or 0)')

    def offer_camera_info(self, info) -> str | None:
        """Keep the camera model of a CameraInfo; return why it was refused, or None."""
        model, problem = camera_model(info)
        with self._lock:
            if problem is None:
                self._camera, self._camera_problem = model, ''
            elif self._camera is None:
                self._camera_problem = problem
        if problem is not None:
            self.counters.depth_rejected += 1
        return problem

    def clear(self) -> None:
        with self._lock:
            self._depth.clear()
            self._newest_stamp = None
            self._camera = None
            self._camera_problem = 'no camera_info received yet'

    def _nearest(self, stamp: int, max_delay_ns: int):
        with self._lock:
            candidates = [(abs(depth_stamp - stamp), depth_stamp, msg)
                          for depth_stamp, msg in self._depth]
            camera, camera_problem = self._camera, self._camera_problem
        best = min(candidates, key=lambda c: c[0], default=None)
        if best is None or best[0] > max_delay_ns:
            return None, None, camera, camera_problem
        return best[1], best[2], camera, camera_problem

    def depth_for(self, header, width: int, height: int, *, max_delay: float,
                  max_depth: float) -> PairedDepth:
        """The depth in metres for a width x height frame; none, with a reason, when it does
        not fit. Counted once per frame (paired, without depth, refused)."""
        depth_stamp, msg, camera, camera_problem = self._nearest(
            stamp_ns(header), int(max_delay * 1e9))
        if msg is None:
            self.counters.frames_without_depth += 1
            return PairedDepth(None, None, None)
        problem = None
        if camera is None:
            problem = camera_problem
        elif (camera.width, camera.height) != (width, height):
            problem = (f'camera_info is {camera.width}x{camera.height} but the colour frame is '
                       f'{width}x{height}: give the colour camera\'s camera_info')
        elif (int(msg.width), int(msg.height)) != (width, height):
            problem = (f'depth image is {msg.width}x{msg.height} but the colour frame is '
                       f'{width}x{height}: give depth registered to the colour image')
        if problem is not None:
            self.counters.frames_depth_refused += 1
            return PairedDepth(None, None, None, problem)
        self.counters.frames_paired += 1
        return PairedDepth(depth_stamp, depth_in_metres(depth_array(msg), msg.encoding, max_depth),
                           camera)
