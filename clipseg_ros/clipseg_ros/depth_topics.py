"""The node's depth inputs: `depth` and `camera_info` subscriptions feeding a DepthPairing."""

from collections.abc import Callable
import time

from clipseg_ros.depth_input import (
    DepthPairing, PairedDepth, PairedTargets, stamp_ns, targets_of)
from clipseg_ros.depth_stall import DepthStall
from clipseg_ros.input_qos import FollowingSubscription
import numpy as np
from sensor_msgs.msg import CameraInfo, Image


class DepthTopics:
    """
    Subscribes `depth` (16UC1 mm or 32FC1 m, registered to the colour image) and `camera_info`
    (the colour camera's), both relative like `image` and under the camera's ``prefix``
    ('' or 'name/'); pairs them with colour frames, and says when a frame may go: with its
    depth, when its depth can no longer come, or at once during a stall (depth_stall.py).
    """

    def __init__(self, node, reliability: str, callback_group,
                 warn: Callable[[str, str], None], prefix: str = '',
                 arrived: Callable[[], None] = lambda: None) -> None:
        self._node = node
        self._warn = warn
        # Told of every usable depth image or camera_info, so a frame waiting for it can go.
        self._arrived = arrived
        self.pairing = DepthPairing()
        self.stall = DepthStall()
        # reliability: qos_reliability, per topic (auto follows each topic's publishers)
        self.inputs = [
            FollowingSubscription(node, Image, prefix + 'depth', self._on_depth, reliability,
                                  callback_group),
            FollowingSubscription(node, CameraInfo, prefix + 'camera_info',
                                  self._on_camera_info, reliability, callback_group),
        ]

    def _on_depth(self, msg: Image) -> None:
        problem = self.pairing.offer_depth(msg)
        if problem is not None:
            self._warn('depth', f'depth image refused: {problem}')
        else:
            self._input_arrived()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        problem = self.pairing.offer_camera_info(msg)
        if problem is not None:
            self._warn('camera_info', f'camera_info refused: {problem}')
        else:  # it may complete a depth image that came before it
            self._input_arrived()

    def _input_arrived(self) -> None:
        if self.stall.active:
            max_delay = self._value('depth_max_delay')
            self.stall.end_if_paired(lambda stamp: self.pairing.has_depth_for(stamp, max_delay),
                                     time.monotonic(), self._value('depth_wait'))
        self._arrived()

    def ready_for(self, header) -> bool:
        """
        Whether a frame of this header may go now, with the live delay: it has its depth, its
        depth can no longer come, or the camera is stalled (counted in wait_skipped).
        """
        max_delay, stamp = self._value('depth_max_delay'), stamp_ns(header)
        if self.pairing.has_depth_for(stamp, max_delay):
            self.stall.end()  # depth pairs again
            return True
        if self.stall.went_at_once(stamp, time.monotonic()):
            self.pairing.counters.wait_skipped += 1
            return True
        return self.pairing.ready_for(header, max_delay)

    def wait_ran_out(self, header, received_at: float, waited_s: float) -> None:
        """A frame goes without depth after the whole wait: stall, and say why (throttled)."""
        if self._value('depth_wait') <= 0.0:
            return  # no wait was asked for: nothing to stall or warn about
        self.stall.begin(stamp_ns(header), received_at)
        reason = self.pairing.why_unpaired(header, self._value('depth_max_delay'))
        self._warn('depth_wait', f'a frame went without depth after waiting '
                   f'{waited_s * 1e3:.0f} ms: {reason}; frames go at once until depth pairs '
                   'with one again')

    def _value(self, name: str):
        return self._node.get_parameter(name).value

    def depth_for(self, header, width: int, height: int) -> PairedDepth:
        """The depth paired with a frame, with the node's live depth parameters."""
        paired = self.pairing.depth_for(header, width, height,
                                        max_delay=self._value('depth_max_delay'),
                                        max_depth=self._value('max_depth'))
        if paired.problem is not None:
            self._warn('depth_pairing', f'no 3D for this frame: {paired.problem}')
        return paired

    def targets_for(self, header, labels: np.ndarray, prompt_count: int,
                    paired: PairedDepth | None = None) -> PairedTargets:
        """The 3D targets of a frame: from ``paired`` when the frame's depth was paired before
        segmenting it (for the refinement), else paired now."""
        if paired is None:
            paired = self.depth_for(header, labels.shape[1], labels.shape[0])
        return targets_of(paired, labels, prompt_count, self._value('depth_erosion_px'))

    def destroy(self) -> None:
        for following in self.inputs:
            following.destroy()
        self.inputs = []
