"""
The node's topics: their QoS, and one segmentation result published as mask, confidence,
overlay and Segmentation message, each with the camera frame's header.
"""

from dataclasses import dataclass

from clipseg_ros import conversions
from clipseg_ros.engine import SegmentationResult
from clipseg_ros.prompts import Prompt
from clipseg_ros.overlay import render_overlay
from clipseg_ros_interfaces.msg import Segmentation
from geometry_msgs.msg import Point
import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

# Outputs: the newest result only; reliable, so a subscriber gets every result it can take.
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)


def camera_qos(reliability: str) -> QoSProfile:
    """The image subscription's QoS: the newest frame only, best_effort or reliable."""
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                      reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                                   else ReliabilityPolicy.BEST_EFFORT))


@dataclass(frozen=True)
class PromptSet:
    """The prompts in force, replaced as a whole so a frame never sees half an update."""

    prompts: tuple[Prompt, ...] = ()
    version: int = 0

    @property
    def labels(self) -> list[str]:
        return [prompt.label for prompt in self.prompts]


def segmentation_msg(header: Header, result: SegmentationResult, prompt_set: PromptSet,
                     threshold: float) -> Segmentation:
    """Return the Segmentation message of one result."""
    stats = result.stats
    msg = Segmentation(header=header, prompt_version=prompt_set.version,
                       threshold=float(threshold), labels=prompt_set.labels)
    msg.max_confidence = [float(v) for v in result.max_confidence]
    msg.pixel_count = [int(v) for v in stats.pixel_count]
    msg.mean_confidence = [float(v) for v in stats.mean_confidence]
    msg.boxes = [RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w),
                                  height=int(h)) for x, y, w, h in stats.boxes]
    msg.centroids = [Point(x=float(x), y=float(y), z=0.0) for x, y in stats.centroids]
    msg.inference_time = float(result.inference_seconds)
    return msg


class ResultPublishers:
    """The lifecycle publishers of one camera's outputs, created at configure."""

    def __init__(self, node) -> None:
        self._node = node
        self._publishers = {
            'mask': node.create_lifecycle_publisher(Image, 'mask', OUTPUT_QOS),
            'confidence': node.create_lifecycle_publisher(Image, 'confidence', OUTPUT_QOS),
            'overlay': node.create_lifecycle_publisher(Image, 'overlay', OUTPUT_QOS),
            'segmentation': node.create_lifecycle_publisher(Segmentation, 'segmentation',
                                                            OUTPUT_QOS),
        }

    def publish(self, header: Header, image_rgb: np.ndarray, result: SegmentationResult,
                prompt_set: PromptSet, threshold: float, with_overlay: bool) -> None:
        publishers = self._publishers
        segmentation = segmentation_msg(header, result, prompt_set, threshold)
        # Image outputs nobody listens to are not built: the overlay alone costs milliseconds.
        if publishers['mask'].get_subscription_count():
            publishers['mask'].publish(conversions.array_to_image(result.labels, 'mono8', header))
        if publishers['confidence'].get_subscription_count():
            publishers['confidence'].publish(
                conversions.array_to_image(result.confidence, '32FC1', header))
        publishers['segmentation'].publish(segmentation)
        if with_overlay and publishers['overlay'].get_subscription_count():
            overlay = render_overlay(image_rgb, result.labels, result.stats, prompt_set.labels)
            publishers['overlay'].publish(conversions.array_to_image(overlay, 'rgb8', header))

    def destroy(self) -> None:
        for publisher in self._publishers.values():
            self._node.destroy_lifecycle_publisher(publisher)
        self._publishers = {}
