"""
One camera's objects: the instances of each segmented frame and their tracks, with the node's
live parameters. Kept by the node per camera name for its whole life, so track ids are never
reused, even across a cleanup and configure (which start tracks afresh).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipseg_ros.core.appearance import colour_signatures
from clipseg_ros.core.instances import find_instances, Instances, InstanceSettings
from clipseg_ros.core.results import SegmentationResult
from clipseg_ros.core.tracks import InstanceTracker, TrackedObjects, TrackerSettings
from clipseg_ros.depth_input import stamp_ns
import numpy as np


@dataclass
class FrameObjects:
    """The instances of a frame and their track values."""

    instances: Instances
    tracked: TrackedObjects


def stamp_seconds(header) -> float:
    return stamp_ns(header) * 1e-9


class CameraObjects:
    """Instances and tracks of one camera; ``parameter(name)`` reads a node parameter."""

    def __init__(self, parameter: Callable[[str], Any]) -> None:
        self._parameter = parameter
        self.tracker = InstanceTracker()

    def reset(self) -> None:
        """Start tracks afresh (configure, cleanup); ids already given stay used."""
        self.tracker.reset()

    def _instances(self, result: SegmentationResult, paired, prompt_count: int) -> Instances:
        value = self._parameter
        settings = InstanceSettings(
            min_pixels=value('min_instance_pixels'), depth_gap=value('instance_depth_gap'),
            max_per_prompt=value('max_instances_per_prompt'),
            erosion_px=value('depth_erosion_px'))
        with_depth = paired is not None and paired.depth_m is not None
        return find_instances(result.labels, result.confidence, prompt_count, settings,
                              paired.depth_m if with_depth else None,
                              paired.camera if with_depth else None, boxes=result.stats.boxes)

    def update(self, header, result: SegmentationResult, paired, prompt_set,
               image_rgb: np.ndarray | None = None) -> FrameObjects:
        """
        The objects of a frame the camera published; advances its tracks. ``image_rgb``, the
        frame, gives each instance its colour signature (re-identification, ambiguous pairs).
        """
        instances = self._instances(result, paired, len(prompt_set.prompts))
        value = self._parameter
        if not value('tracking'):
            self.tracker.reset()
            return FrameObjects(instances, TrackedObjects.untracked(instances))
        self.tracker.settings = TrackerSettings(
            max_missed_frames=value('track_max_missed_frames'),
            min_frames=value('track_min_frames'), smoothing=value('track_smoothing'),
            gate_m=value('track_gate'), reid_seconds=value('track_reid_seconds'))
        signatures = None
        if image_rgb is not None and image_rgb.shape[:2] == instances.image.shape:
            signatures = colour_signatures(image_rgb, instances.image, len(instances))
        tracked = self.tracker.update(instances, stamp_seconds(header), prompt_set.version,
                                      signatures)
        return FrameObjects(instances, tracked)

    def match(self, header, result: SegmentationResult, paired, prompt_set,
              with_tracks: bool) -> FrameObjects:
        """
        The objects of an image segmented on request; with ``with_tracks`` (the camera's latest
        frame with the prompts in force) the ids of the tracks they belong to, tracks unchanged.
        """
        instances = self._instances(result, paired, len(prompt_set.prompts))
        tracked = TrackedObjects.untracked(instances)
        if with_tracks and self._parameter('tracking'):
            tracked.track_ids = self.tracker.match(instances, stamp_seconds(header),
                                                   prompt_set.version)
        return FrameObjects(instances, tracked)
