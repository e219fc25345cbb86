"""The node's depth inputs: `depth` and `camera_info` subscriptions feeding a DepthPairing."""

from collections.abc import Callable

from clipseg_ros.depth_input import DepthPairing, PairedTargets
from clipseg_ros.input_qos import FollowingSubscription
import numpy as np
from sensor_msgs.msg import CameraInfo, Image


class DepthTopics:
    """
    Subscribes `depth` (16UC1 mm or 32FC1 m, registered to the colour image) and `camera_info`
    (the colour camera's), both relative like `image` and under the camera's ``prefix``
    ('' or 'name/'); pairs them with colour frames.
    """

    def __init__(self, node, reliability: str, callback_group,
                 warn: Callable[[str, str], None], prefix: str = '',
                 arrived: Callable[[bool], None] = lambda resumed: None) -> None:
        self._node = node
        self._warn = warn
        # Told of every usable depth image or camera_info, so a frame waiting for it can go;
        # resumed: depth can pair again (a depth image with a camera_info, or the first
        # camera_info), which ends a stall after a frame's wait ran out.
        self._arrived = arrived
        self.pairing = DepthPairing()
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
            self._arrived(self.pairing.has_camera)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        first = not self.pairing.has_camera
        problem = self.pairing.offer_camera_info(msg)
        if problem is not None:
            self._warn('camera_info', f'camera_info refused: {problem}')
        else:  # the first usable one may complete a depth image that came before it
            self._arrived(first)

    def ready_for(self, header) -> bool:
        """Whether a frame of this header has its depth (or never will), with the live delay."""
        return self.pairing.ready_for(header, self._node.get_parameter('depth_max_delay').value)

    def targets_for(self, header, labels: np.ndarray, prompt_count: int) -> PairedTargets:
        """The 3D targets of a frame, with the node's live depth parameters."""
        value = self._node.get_parameter
        paired = self.pairing.targets_for(
            header, labels, prompt_count, max_delay=value('depth_max_delay').value,
            max_depth=value('max_depth').value, erosion_px=value('depth_erosion_px').value)
        if paired.problem is not None:
            self._warn('depth_pairing', f'no 3D for this frame: {paired.problem}')
        return paired

    def destroy(self) -> None:
        for following in self.inputs:
            following.destroy()
        self.inputs = []
