"""
Tracks lost a short while ago, kept so that an object coming back (from behind another, from
outside the view) gets its id back. numpy only, no ROS.

A lost track is remembered with its colour signature (core/appearance.py) and its last box for
``window`` seconds. A new track, once it is reported, claims the one of its prompt whose
signature is within REID_DISTANCE of its own and that it could have reached: with depth on
both sides, within MAX_SPEED_M_S x the time lost + the gate of the 3D centroid last seen;
without, within (REID_REACH + REID_REACH_PER_S x the time lost) of the lost box's diagonals,
or at the image border it left by. Of several such, the one last seen nearest to it in the
image (two objects that look alike: the one that left from there). An entry is not claimed
while a live track of the prompt that looks like it is at least as near to where it was lost
as the new track (the lost object may be that one). A claimed entry is gone: an id is never
given to two tracks.
"""

from dataclasses import dataclass

from clipseg_ros.core.appearance import signature_distance
import numpy as np

# Hellinger distance of colour histograms below which a returning object is the lost one.
REID_DISTANCE = 0.3
# Without depth: how many of the lost box's diagonals a returning object may be from it, at
# once and per second lost.
REID_REACH = 2.0
REID_REACH_PER_S = 2.0
# A box within this fraction of its diagonal from an image border is at that border.
BORDER_MARGIN = 0.5
MAX_LOST_PER_PROMPT = 32


@dataclass
class Sighting:
    """Where a track of a prompt is: box (x, y, w, h), 3D centroid (NaN: none), signature."""

    box: np.ndarray
    position: np.ndarray
    signature: np.ndarray | None


@dataclass(frozen=True)
class Reach:
    """How far a lost object may have gone: the 3D speed bound, gate and the image size."""

    max_speed_m_s: float
    gate_m: float
    image_size: tuple[int, int]    # width, height


@dataclass
class LostTrack:
    """What a lost track leaves behind for its object's return."""

    track_id: int
    prompt: int
    signature: np.ndarray
    box: np.ndarray                # x, y, w, h when last seen
    lost_at: float
    position: np.ndarray           # 3D centroid when last seen (NaN: no depth)
    last_seen: float
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

    def claim(self, prompt: int, new: Sighting, stamp: float, reach: Reach,
              live: list[Sighting]) -> LostTrack | None:
        """
        The lost track an object of ``prompt`` seen as ``new`` at ``stamp`` is, taken out;
        ``live``: the prompt's other reported tracks.
        """
        if new.signature is None:
            return None
        entries = [entry for entry in self._lost if entry.prompt == prompt]
        if not entries:
            return None
        distances = signature_distance(new.signature[None], np.array(
            [entry.signature for entry in entries]))[0]
        alike = [entry for entry, distance in zip(entries, distances.tolist())
                 if distance < REID_DISTANCE and _reachable(entry, new, stamp, reach)
                 and not _nearer_look_alike(entry, new, live)]
        if not alike:
            return None
        chosen = min(alike, key=lambda entry: _centre_distance(entry.box, new.box))
        self._lost.remove(chosen)
        return chosen


def _centre(box: np.ndarray) -> np.ndarray:
    return box[:2] + box[2:] / 2


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(_centre(a) - _centre(b)))


def _reachable(entry: LostTrack, new: Sighting, stamp: float, reach: Reach) -> bool:
    """Whether the lost object could be where ``new`` is, ``stamp - last_seen`` later."""
    seconds = max(0.0, stamp - entry.last_seen)
    if np.isfinite(entry.position).all() and np.isfinite(new.position).all():
        distance = float(np.linalg.norm(new.position - entry.position))
        return distance <= reach.max_speed_m_s * seconds + reach.gate_m
    diagonal = max(float(np.linalg.norm(entry.box[2:])), 1.0)
    if _centre_distance(entry.box, new.box) <= diagonal * (
            REID_REACH + REID_REACH_PER_S * seconds):
        return True
    return bool(_borders(entry.box, reach.image_size) & _borders(new.box, reach.image_size))


def _borders(box: np.ndarray, image_size: tuple[int, int]) -> set[str]:
    """The image borders a box is at."""
    margin = BORDER_MARGIN * float(np.linalg.norm(box[2:]))
    width, height = image_size
    x, y, w, h = (float(value) for value in box)
    at = {'left': x <= margin, 'top': y <= margin, 'right': x + w >= width - margin,
          'bottom': y + h >= height - margin}
    return {name for name, near in at.items() if near}


def _nearer_look_alike(entry: LostTrack, new: Sighting, live: list[Sighting]) -> bool:
    """Whether a live track that looks like the lost one is as near to where it was lost."""
    distance = _centre_distance(entry.box, new.box)
    for other in live:
        if other.signature is None or _centre_distance(entry.box, other.box) > distance:
            continue
        if signature_distance(other.signature[None], entry.signature[None])[0, 0] \
                < REID_DISTANCE:
            return True
    return False
