"""
The last frame each camera's worker segmented and published, kept so that ~/segment on the
camera's latest frame with the prompts in force answers from it instead of segmenting the same
frame again (the common call of a grasp planner; docs/cpu_backends.md has the round trips).

One entry per camera (its arrays are one frame's mask and confidence), replaced by each
published frame and dropped at cleanup. An entry answers only for the very frame message, prompt
set, threshold and input resolution it was computed with.
"""

from dataclasses import dataclass
import threading
from typing import Any


@dataclass(frozen=True)
class SegmentedFrame:
    """A published frame's result and what it was computed with."""

    msg: Any            # the frame message (compared by identity)
    prompt_set: Any     # the PromptSet in force (replaced whole when prompts change)
    threshold: float
    resolution: int
    result: Any         # SegmentationResult
    paired: Any         # its 3D targets, or None
    objects: Any        # its instances and tracks


class SegmentedFrames:
    """The last :class:`SegmentedFrame` of each camera; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, SegmentedFrame] = {}

    def remember(self, camera: str, frame: SegmentedFrame) -> None:
        with self._lock:
            self._frames[camera] = frame

    def find(self, camera: str, msg: Any, prompt_set: Any, threshold: float,
             resolution: int) -> SegmentedFrame | None:
        """The entry for exactly this frame, prompt set, threshold and resolution, or None."""
        with self._lock:
            frame = self._frames.get(camera)
        if frame is None or msg is None or frame.msg is not msg or \
                frame.prompt_set is not prompt_set or frame.threshold != threshold or \
                frame.resolution != resolution:
            return None
        return frame

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
