"""
The last frame each camera's worker segmented and published, kept so that ~/segment on the
camera's latest frame with the prompts in force answers from it instead of segmenting the same
frame again (the common call of a grasp planner; docs/cpu_backends.md has the round trips), and
so that a click or ~/teach finds the object under a pixel of the frame the operator saw.

One entry per camera (its arrays are one frame's mask and confidence), replaced by each
published frame and dropped at cleanup. An entry answers only for the very frame message, prompt
set, threshold, input resolution, refinement and object settings it was computed with.
"""

from collections.abc import Callable
from dataclasses import dataclass
import threading
from typing import Any

from clipseg_ros.core.depth_targets import CameraModel
import numpy as np


# The live parameters a published frame's 3D targets, instances and tracks were computed with.
OBJECT_PARAMETERS = (
    'depth_max_delay', 'max_depth', 'depth_erosion_px', 'min_instance_pixels',
    'instance_depth_gap', 'max_instances_per_prompt', 'tracking', 'track_max_missed_frames',
    'track_min_frames', 'track_smoothing', 'track_gate', 'track_reid_seconds')


def object_settings(value_of: Callable[[str], Any]) -> tuple:
    """The values of :data:`OBJECT_PARAMETERS` now, ``value_of(name)`` reading one."""
    return tuple(value_of(name) for name in OBJECT_PARAMETERS)


@dataclass(frozen=True)
class SegmentedFrame:
    """A published frame's result and what it was computed with."""

    msg: Any            # the frame message (compared by identity)
    prompt_set: Any     # the PromptSet in force (replaced whole when prompts change)
    threshold: float
    resolution: int
    refine: Any         # the RefineSettings of the frame maps
    result: Any         # SegmentationResult
    paired: Any         # its 3D targets, or None
    objects: Any        # its instances and tracks
    rgb: np.ndarray     # the frame as the engine saw it (a reference, not a copy)
    object_settings: tuple = ()  # object_settings() when its objects were found

    @property
    def header(self) -> Any:
        return self.msg.header

    @property
    def instance_image(self) -> np.ndarray | None:
        """(H, W) uint16 instance indices, 0 = none."""
        return self.objects.instances.image if self.objects is not None else None

    @property
    def depth_m(self) -> np.ndarray | None:
        """The paired depth in metres (NaN = none), or None."""
        return self.paired.depth_m if self.paired is not None else None

    @property
    def camera_model(self) -> CameraModel | None:
        return self.paired.camera if self.paired is not None else None


class SegmentedFrames:
    """The last :class:`SegmentedFrame` of each camera; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, SegmentedFrame] = {}

    def remember(self, camera: str, frame: SegmentedFrame) -> None:
        with self._lock:
            self._frames[camera] = frame

    def get(self, camera: str) -> SegmentedFrame | None:
        """The camera's last segmented frame, whatever it was computed with."""
        with self._lock:
            return self._frames.get(camera)

    def find(self, camera: str, msg: Any, prompt_set: Any, threshold: float,
             resolution: int, refine: Any, settings: tuple) -> SegmentedFrame | None:
        """The entry for exactly this frame, prompt set, threshold, resolution, refinement and
        object settings (:func:`object_settings`), or None."""
        with self._lock:
            frame = self._frames.get(camera)
        if frame is None or msg is None or frame.msg is not msg or \
                frame.prompt_set is not prompt_set or frame.threshold != threshold or \
                frame.resolution != resolution or frame.refine != refine or \
                frame.object_settings != settings:
            return None
        return frame

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
