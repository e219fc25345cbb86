"""
Tracks lost a short while ago, kept so that an object coming back (from behind another, from
outside the view) gets its id back. numpy only, no ROS.

A lost track is remembered with its colour signature (core/appearance.py) and its last box for
``window`` seconds. A new track, once it is reported, claims the one of its prompt whose
signature is within REID_DISTANCE of its own; of several such, the one last seen nearest to it
in the image (two objects that look alike: the one that left from there). A claimed entry is
gone: an id is never given to two tracks.
"""

from dataclasses import dataclass

from clipseg_ros.core.appearance import signature_distance
import numpy as np

# Hellinger distance of colour histograms below which a returning object is the lost one.
REID_DISTANCE = 0.3
MAX_LOST_PER_PROMPT = 32


@dataclass
class LostTrack:
    """What a lost track leaves behind for its object's return."""

    track_id: int
    prompt: int
    signature: np.ndarray
    box: np.ndarray                # x, y, w, h when last seen
    lost_at: float
    first_stamp: float
    frames: int


class LostTracks:
    """The lost tracks of one camera, per prompt, newest last."""

    def __init__(self) -> None:
        self._lost: list[LostTrack] = []

    def __len__(self) -> int:
        return len(self._lost)

    def clear(self) -> None:
        self._lost = []

    def add(self, lost: LostTrack) -> None:
        """Remember a lost track; the oldest of its prompt go beyond MAX_LOST_PER_PROMPT."""
        self._lost.append(lost)
        same = [entry for entry in self._lost if entry.prompt == lost.prompt]
        if len(same) > MAX_LOST_PER_PROMPT:
            self._lost.remove(same[0])

    def expire(self, stamp: float, window: float) -> None:
        """Forget those lost more than ``window`` seconds before ``stamp``."""
        self._lost = [entry for entry in self._lost if stamp - entry.lost_at <= window]

    def claim(self, prompt: int, signature: np.ndarray | None,
              box: np.ndarray) -> LostTrack | None:
        """The lost track an object of ``prompt`` looking like ``signature`` is, taken out."""
        if signature is None:
            return None
        entries = [entry for entry in self._lost if entry.prompt == prompt]
        if not entries:
            return None
        distances = signature_distance(signature[None], np.array(
            [entry.signature for entry in entries]))[0]
        alike = [entry for entry, distance in zip(entries, distances.tolist())
                 if distance < REID_DISTANCE]
        if not alike:
            return None
        centre = box[:2] + box[2:] / 2
        chosen = min(alike, key=lambda entry: float(np.linalg.norm(
            entry.box[:2] + entry.box[2:] / 2 - centre)))
        self._lost.remove(chosen)
        return chosen
