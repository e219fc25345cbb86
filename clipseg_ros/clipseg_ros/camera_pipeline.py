"""
One camera's topics in the clipseg node: its image subscription, its depth inputs and its
outputs, all under the camera's name, so one node serves several cameras with one model.

Camera ``c`` reads ``c/image`` (or ``c/image/compressed``), with depth ``c/depth`` and
``c/camera_info``, and publishes ``c/mask``, ``c/confidence``, ``c/overlay``,
``c/segmentation`` (and ``c/points``, ``c/markers``). The unnamed camera '' uses the plain names.
"""

from collections.abc import Callable
import time
from typing import Any

from clipseg_ros import conversions
from clipseg_ros.camera_names import topic_prefix
from clipseg_ros.conversions import ImageConversionError
from clipseg_ros.core.refine import RefineSettings
from clipseg_ros.depth_input import PairedDepth, PairedTargets
from clipseg_ros.depth_topics import DepthTopics
from clipseg_ros.frame_slot import FrameCounters
from clipseg_ros.input_qos import FollowingSubscription
from clipseg_ros.publishers import ResultPublishers
from geometry_msgs.msg import PointStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, Image


class CameraPipeline:
    """
    The ROS side of one camera, created at configure and destroyed at cleanup. Its image
    callback counts and validates a frame, then ``offer(name, frame, received_at)`` hands it to
    the scheduler; the node's worker segments it and publishes through ``outputs``.
    """

    def __init__(self, node, name: str, *, compressed: bool, reliability: str, use_depth: bool,
                 callback_group, counters: FrameCounters,
                 offer: Callable[[str, Any, float], None], max_pixels: Callable[[], int],
                 warn: Callable[[str, str], None],
                 depth_arrived: Callable[[str], None] = lambda name: None,
                 on_click: Callable[[str, Any], None] | None = None) -> None:
        self.name = name
        self._node = node
        self._warn = warn
        self._counters = counters
        self._offer = offer
        self._max_pixels = max_pixels
        prefix = topic_prefix(name)
        self.last_frame_time: float | None = None
        self.outputs = ResultPublishers(node, with_depth=use_depth, prefix=prefix)
        self.depth = (DepthTopics(node, reliability, callback_group, self.warn, prefix,
                                  arrived=lambda: depth_arrived(name))
                      if use_depth else None)
        message_type, topic = ((CompressedImage, 'image/compressed') if compressed
                               else (Image, 'image'))
        # reliability: qos_reliability (auto follows the publishers: input_qos.py)
        self.image_input = FollowingSubscription(node, message_type, prefix + topic,
                                                 self._on_image, reliability, callback_group)
        # rqt_image_view's click on `image` (teach by pointing: teach_services.py).
        self.clicks = None if on_click is None else node.create_subscription(
            PointStamped, prefix + 'image_mouse_left', lambda msg: on_click(name, msg), 10,
            callback_group=callback_group)

    @property
    def subscription(self):
        """The image subscription in charge now (auto may replace it)."""
        return self.image_input.subscription

    def _on_image(self, msg) -> None:
        now = time.monotonic()
        counters = self._counters
        counters.received += 1
        counters.receive_times.append(now)
        self.last_frame_time = now
        try:
            conversions.validate_frame(msg, self._max_pixels())
        except ImageConversionError as error:
            counters.rejected += 1
            self.warn('frame', f'dropping camera frame: {error}')
            return
        self._offer(self.name, msg, now)

    def warn(self, key: str, text: str) -> None:
        """A throttled warning, keyed and worded per camera."""
        if self.name:
            self._warn(f'{self.name}:{key}', f"camera '{self.name}': {text}")
        else:
            self._warn(key, text)

    def inputs_ready(self, msg) -> bool:
        """Whether a frame may be segmented now: its depth is there, will never be, or unused."""
        return self.depth is None or self.depth.ready_for(msg.header)

    def inputs_timed_out(self, msg, received_at: float, waited_s: float) -> None:
        """The frame goes without its depth: its wait ran out."""
        if self.depth is not None:
            self.depth.wait_ran_out(msg.header, received_at, waited_s)

    def depth_for_refinement(self, header, image_rgb: np.ndarray) -> PairedDepth | None:
        """The frame's depth, paired before segmenting it, when depth is in use, else None."""
        if self.depth is None:
            return None
        return self.depth.depth_for(header, image_rgb.shape[1], image_rgb.shape[0])

    def depth_targets(self, header, labels: np.ndarray, prompt_count: int,
                      paired: PairedDepth | None = None) -> PairedTargets | None:
        """The frame's 3D targets when depth is in use (from ``paired`` when given), else None."""
        depth = self.depth
        return depth.targets_for(header, labels, prompt_count, paired) \
            if depth is not None else None

    def destroy(self) -> None:
        self.image_input.destroy()
        if self.clicks is not None:
            self._node.destroy_subscription(self.clicks)
        self.outputs.destroy()
        if self.depth is not None:
            self.depth.destroy()


def refinement_depths(frames: list, refine: RefineSettings) -> list[PairedDepth | None]:
    """
    Each (camera, msg, received_at, image_rgb) frame's depth, paired before it is segmented
    where a refinement guided by depth needs it (the depth wait has it there); else None.
    """
    if not (refine.enabled and refine.depth_weight > 0):
        return [None] * len(frames)
    return [camera.depth_for_refinement(msg.header, image_rgb)
            for camera, msg, _, image_rgb in frames]
