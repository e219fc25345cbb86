"""
The node's topics: their QoS, and one segmentation result published as mask, confidence,
overlay and Segmentation message, each with the camera frame's header.
"""

from dataclasses import dataclass

from builtin_interfaces.msg import Time
from clipseg_ros import conversions
from clipseg_ros.core.depth_targets import instance_points, POINT_DTYPE
from clipseg_ros.core.overlay import render_overlay
from clipseg_ros.core.prompts import Prompt
from clipseg_ros.core.results import SegmentationResult
from clipseg_ros.depth_input import PairedTargets
from clipseg_ros.object_messages import (
    instance_msgs, MarkerPool, object_markers, point_msg, target_markers)
from clipseg_ros.objects import FrameObjects
from clipseg_ros_interfaces.msg import Segmentation
from geometry_msgs.msg import Point
import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

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
                     threshold: float, paired: PairedTargets | None = None,
                     objects: FrameObjects | None = None) -> Segmentation:
    """Return the Segmentation message of one result (3D fields when depth was paired)."""
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
    if paired is not None:  # depth in use: one entry per prompt, NaN without a depth image
        targets = paired.targets
        if paired.depth_stamp_ns is not None:
            msg.has_depth = True
            seconds, nanoseconds = divmod(paired.depth_stamp_ns, 1_000_000_000)
            msg.depth_stamp = Time(sec=seconds, nanosec=nanoseconds)
        msg.centroids_3d = [point_msg(row) for row in targets.centroids]
        msg.extent_min_3d = [point_msg(row) for row in targets.extent_min]
        msg.extent_max_3d = [point_msg(row) for row in targets.extent_max]
        msg.depth_pixel_count = [int(n) for n in targets.valid_pixels]
    if objects is not None:
        msg.instances = instance_msgs(objects, prompt_set.labels)
    return msg


POINT_FIELDS = [PointField(name='x', offset=0, datatype=PointField.FLOAT32, count=1),
                PointField(name='y', offset=4, datatype=PointField.FLOAT32, count=1),
                PointField(name='z', offset=8, datatype=PointField.FLOAT32, count=1),
                PointField(name='label', offset=12, datatype=PointField.UINT8, count=1),
                PointField(name='instance', offset=14, datatype=PointField.UINT16, count=1)]


def point_cloud_msg(header: Header, cloud: np.ndarray) -> PointCloud2:
    """An unorganised PointCloud2 of (M,) POINT_DTYPE points (valid only)."""
    msg = PointCloud2(header=header, height=1, width=len(cloud), fields=POINT_FIELDS,
                      is_bigendian=False, point_step=POINT_DTYPE.itemsize,
                      row_step=POINT_DTYPE.itemsize * len(cloud), is_dense=True)
    msg.data = conversions.byte_array(cloud)
    return msg


PROMPT_NAMESPACES = ('clipseg_centroids', 'clipseg_extents', 'clipseg_labels')


def markers_msg(header: Header, paired: PairedTargets, labels: list[str],
                pool: MarkerPool | None = None) -> MarkerArray:
    """For rviz: per prompt with depth, a sphere at its centroid, its extent box and its text."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    targets = paired.targets
    for index, label in enumerate(labels):
        centroid = targets.centroids[index]
        if not np.isfinite(centroid).all():
            continue
        low, high = targets.extent_min[index], targets.extent_max[index]
        markers += target_markers(header, PROMPT_NAMESPACES, index, label, index, 0.9, 0.3,
                                  centroid, (low + high) / 2.0, np.maximum(high - low, 0.005),
                                  pool)
    return MarkerArray(markers=markers)


class ResultPublishers:
    """The lifecycle publishers of one camera's outputs, created at configure."""

    def __init__(self, node, with_depth: bool, prefix: str = '') -> None:
        """``prefix``: the camera's topic prefix ('' or 'name/'), relative like the names."""
        self._node = node
        topics = [('mask', Image), ('confidence', Image), ('overlay', Image),
                  ('segmentation', Segmentation), ('instances', Image)]
        if with_depth:
            topics += [('points', PointCloud2), ('markers', MarkerArray)]
        self._publishers = {
            name: node.create_lifecycle_publisher(message_type, prefix + name, OUTPUT_QOS)
            for name, message_type in topics}
        # Track ids with markers in rviz now; None while markers are per prompt.
        self._marker_tracks: set[int] | None = None
        self._marker_pool = MarkerPool()

    def _wanted(self, name: str) -> bool:
        publisher = self._publishers.get(name)
        return publisher is not None and publisher.get_subscription_count() > 0

    def publish(self, header: Header, image_rgb: np.ndarray, result: SegmentationResult,
                prompt_set: PromptSet, threshold: float, with_overlay: bool,
                paired: PairedTargets | None = None, point_decimation: int = 1,
                objects: FrameObjects | None = None) -> None:
        publishers = self._publishers
        segmentation = segmentation_msg(header, result, prompt_set, threshold, paired, objects)
        # Outputs nobody listens to are not built: the overlay alone costs milliseconds.
        if self._wanted('mask'):
            publishers['mask'].publish(conversions.array_to_image(result.labels, 'mono8', header))
        if self._wanted('confidence'):
            publishers['confidence'].publish(
                conversions.array_to_image(result.confidence, '32FC1', header))
        publishers['segmentation'].publish(segmentation)
        if objects is not None and self._wanted('instances'):
            publishers['instances'].publish(
                conversions.array_to_image(objects.instances.image, 'mono16', header))
        if with_overlay and self._wanted('overlay'):
            overlay = render_overlay(image_rgb, result.labels, result.stats, prompt_set.labels)
            publishers['overlay'].publish(conversions.array_to_image(overlay, 'rgb8', header))
        if paired is None or paired.depth_m is None:
            return
        if self._wanted('points'):
            cloud = instance_points(
                result.labels, objects.instances.image if objects is not None else None,
                paired.depth_m, paired.camera, point_decimation)
            publishers['points'].publish(point_cloud_msg(header, cloud))
        if self._wanted('markers'):
            publishers['markers'].publish(self._markers(header, paired, prompt_set, objects,
                                                        segmentation))

    def _markers(self, header: Header, paired: PairedTargets, prompt_set: PromptSet,
                 objects: FrameObjects | None, segmentation: Segmentation) -> MarkerArray:
        """Per tracked object while any instance has a track id, else per prompt."""
        tracking = objects is not None and any(i.track_id for i in segmentation.instances)
        if not tracking and not self._marker_tracks:
            self._marker_tracks = None
            return markers_msg(header, paired, prompt_set.labels, self._marker_pool)
        first = self._marker_tracks is None  # per-prompt markers may still be shown
        markers, self._marker_tracks = object_markers(header, segmentation.instances,
                                                      self._marker_tracks or set(),
                                                      self._marker_pool)
        if first:
            markers.insert(0, Marker(header=header, action=Marker.DELETEALL))
        return MarkerArray(markers=markers)

    def destroy(self) -> None:
        for publisher in self._publishers.values():
            self._node.destroy_lifecycle_publisher(publisher)
        self._publishers = {}
