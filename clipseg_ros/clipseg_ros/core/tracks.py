"""
Identities that last from frame to frame: one camera's instances associated with the tracks of
the previous frames. numpy only, no ROS.

Association, per prompt (an instance never joins a track of another prompt):

* with a 3D centroid on both sides, the distance between the track's predicted centroid and the
  instance's raw one, gated at ``gate_m``: objects that pass each other in the image at
  different depths overlap in 2D but stay apart in 3D;
* besides, or alone without depth, the overlap of the track's predicted box with the
  instance's box (1 - IoU), or when they do not overlap the distance of their centres in box
  diagonals (a small object that moved more than its size in one frame); pairs further apart
  than one diagonal are not associated.

Box overlap rather than mask overlap: a track need not keep a mask, and with predicted boxes
and 3D it separates the objects in every scene tried. The few pairs of a frame are assigned
greedily, cheapest first (scipy's Hungarian solver is not a dependency; with gated costs and a
handful of objects per prompt the two agree).

Smoothing: a constant-velocity alpha-beta filter on the 3D centroid (and on the box centre),
beta = alpha^2 / (2 - alpha) (Benedict-Bordner): it follows a moving object without the lag of
plain exponential smoothing and damps the frame-to-frame flicker of the mask; measurements
outside the gate never reach it. The raw per-frame centroid stays in the instance.
"""

from dataclasses import dataclass, field
import threading

from clipseg_ros.core.instances import Instances
import numpy as np

BOX_SMOOTHING = 0.7      # the box centre follows the image quickly
MAX_SPEED_M_S = 3.0      # a velocity estimate beyond this is noise, not an object on a table
MAX_COASTING_PER_PROMPT = 32   # tracks of a prompt kept while not seen (see _bounded)


@dataclass(frozen=True)
class TrackerSettings:
    """When tracks are created, reported, kept and how their 3D centroid is smoothed."""

    max_missed_frames: int = 10    # a track not seen for more frames is lost
    min_frames: int = 3            # frames in a row before a track is reported (1 = at once)
    smoothing: float = 0.5         # alpha of the filter: 1 = raw centroid, smaller = smoother
    gate_m: float = 0.1            # farthest 3D distance from the prediction to associate


@dataclass
class _Track:
    prompt: int
    first_stamp: float
    last_seen: float
    box: np.ndarray                # x, y, w, h (float) at last_seen, after smoothing
    box_velocity: np.ndarray       # px / s of the box centre
    position: np.ndarray           # smoothed 3D centroid, NaN while never seen with depth
    velocity: np.ndarray           # m / s
    score: float = 0.0
    centroid: np.ndarray = field(default_factory=lambda: np.zeros(2))
    extent: tuple = (np.full(3, np.nan), np.full(3, np.nan))
    raw: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    track_id: int = 0              # 0 until reported
    hits: int = 1
    missed: int = 0
    frames: int = 1

    def predicted(self, stamp: float) -> tuple[np.ndarray, np.ndarray]:
        dt = max(0.0, stamp - self.last_seen)
        box = self.box.copy()
        box[:2] += self.box_velocity * dt
        return box, self.position + self.velocity * dt


@dataclass
class CoastingTrack:
    """A reported track not seen in this frame, with its last values."""

    track_id: int
    prompt_index: int
    score: float
    box: np.ndarray                # x, y, w, h
    centroid: np.ndarray           # pixels
    smoothed: np.ndarray           # 3D, metres
    extent_min: np.ndarray
    extent_max: np.ndarray
    age_frames: int
    age_seconds: float
    missed_frames: int


@dataclass
class TrackedObjects:
    """Track values of a frame's K instances (track_id 0: none reported), and coasting tracks."""

    track_ids: np.ndarray          # (K,) int64
    smoothed: np.ndarray           # (K, 3) float64, the raw centroid where not tracked
    age_frames: np.ndarray         # (K,) int64
    age_seconds: np.ndarray        # (K,) float64
    coasting: list[CoastingTrack] = field(default_factory=list)

    @classmethod
    def untracked(cls, instances: Instances) -> 'TrackedObjects':
        count = len(instances)
        return cls(np.zeros(count, np.int64), instances.targets.centroids.copy(),
                   np.zeros(count, np.int64), np.zeros(count))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (T, 4) and (K, 4) x, y, w, h boxes: (T, K)."""
    a, b = a[:, None, :], b[None, :, :]
    low = np.maximum(a[..., :2], b[..., :2])
    high = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    width, height = (high - low)[..., 0], (high - low)[..., 1]
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(union, 1e-9)


def _bounded(tracks: list[_Track]) -> list[_Track]:
    """
    ``tracks`` with at most MAX_COASTING_PER_PROMPT of a prompt not seen in this frame (those
    missed longest go first): a mask that flickers in new places every frame would otherwise
    keep up to max_missed_frames frames' worth of them.
    """
    coasting = [track for track in tracks if track.missed]
    if len(coasting) <= MAX_COASTING_PER_PROMPT:
        return tracks
    kept: dict[int, list[_Track]] = {}
    for track in sorted(coasting, key=lambda track: track.missed):
        kept.setdefault(track.prompt, []).append(track)
    keep = {id(track) for group in kept.values() for track in group[:MAX_COASTING_PER_PROMPT]}
    return [track for track in tracks if not track.missed or id(track) in keep]


class InstanceTracker:
    """The tracks of one camera; track ids count up for the tracker's life, never reused."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._prompt_version: int | None = None
        self._stamp: float | None = None

    def reset(self) -> None:
        """Forget every track (prompt change, cleanup); ids already given are not reused."""
        with self._lock:
            self._tracks = []
            self._prompt_version = None
            self._stamp = None

    def _costs(self, tracks: list[_Track], instances: Instances, columns: np.ndarray,
               stamp: float) -> np.ndarray:
        """(T, C) costs of tracks and instances ``columns`` of one prompt, inf: not allowed."""
        predicted = [track.predicted(stamp) for track in tracks]
        boxes = np.array([box for box, _ in predicted])
        positions = np.array([position for _, position in predicted])
        found = instances.boxes[columns].astype(np.float64)
        iou = box_iou(boxes, found)
        centre_distance = np.linalg.norm(
            (boxes[:, None, :2] + boxes[:, None, 2:] / 2) - (found[None, :, :2]
                                                             + found[None, :, 2:] / 2), axis=2)
        diagonal = np.maximum(np.linalg.norm(boxes[:, 2:], axis=1), 1.0)[:, None]
        image_cost = np.where(iou > 0, 1.0 - iou, 1.0 + centre_distance / diagonal)
        distance = np.linalg.norm(positions[:, None, :]
                                  - instances.targets.centroids[columns][None, :, :], axis=2)
        with_3d = np.isfinite(distance)
        gate = self.settings.gate_m
        costs = np.where(with_3d, distance / gate + 0.25 * np.minimum(image_cost, 2.0),
                         image_cost)
        allowed = np.where(with_3d, distance <= gate, image_cost < 2.0)
        return np.where(allowed, costs, np.inf)

    def _pairs(self, tracks: list[_Track], instances: Instances,
               stamp: float) -> list[tuple[int, int]]:
        """(track, instance) pairs, prompt by prompt: an instance never joins another's track."""
        pairs = []
        track_prompts = np.array([track.prompt for track in tracks], np.int64)
        for prompt in np.unique(instances.prompt_index):
            rows = np.flatnonzero(track_prompts == prompt)
            if not len(rows):
                continue
            columns = np.flatnonzero(instances.prompt_index == prompt)
            costs = self._costs([tracks[row] for row in rows], instances, columns, stamp)
            pairs += [(int(rows[row]), int(columns[column]))
                      for row, column in self._assign(costs)]
        return pairs

    @staticmethod
    def _assign(costs: np.ndarray) -> list[tuple[int, int]]:
        """Greedy assignment, cheapest pair first, each track and instance at most once."""
        rows, columns = np.nonzero(np.isfinite(costs))
        order = np.argsort(costs[rows, columns], kind='stable')
        used_rows, used_columns, pairs = set(), set(), []
        for row, column in zip(rows[order].tolist(), columns[order].tolist()):
            if row not in used_rows and column not in used_columns:
                used_rows.add(row)
                used_columns.add(column)
                pairs.append((row, column))
        return pairs

    def match(self, instances: Instances, stamp: float, prompt_version: int) -> np.ndarray:
        """The reported track ids of instances, leaving the tracks as they are (0: none)."""
        ids = np.zeros(len(instances), np.int64)
        with self._lock:
            if prompt_version != self._prompt_version:
                return ids
            for row, column in self._pairs(self._tracks, instances, stamp):
                ids[column] = self._tracks[row].track_id
        return ids

    def update(self, instances: Instances, stamp: float, prompt_version: int) -> TrackedObjects:
        """Associate a frame's instances with the tracks, update them, report the frame's."""
        with self._lock:
            if prompt_version != self._prompt_version or (self._stamp is not None
                                                          and stamp < self._stamp):
                self._tracks = []  # new prompts, or time went back (a recording restarted)
            self._prompt_version, self._stamp = prompt_version, stamp
            tracks = self._tracks
            pairs = self._pairs(tracks, instances, stamp)
            matched = {row for row, _ in pairs}
            owner = {column: row for row, column in pairs}
            for row, track in enumerate(tracks):
                track.frames += 1
                if row not in matched:
                    track.missed += 1
            index_of = {}  # id(track) -> the instance it was seen as in this frame
            for column in range(len(instances)):
                if column in owner:
                    track = tracks[owner[column]]
                    self._correct(track, instances, column, stamp)
                else:
                    track = self._new_track(instances, column, stamp)
                    tracks.append(track)
                index_of[id(track)] = column
            self._tracks = _bounded([t for t in tracks if t.missed == 0 or (
                t.track_id and t.missed <= self.settings.max_missed_frames)])
            return self._report(instances, stamp, index_of)

    def _new_track(self, instances: Instances, column: int, stamp: float) -> _Track:
        track = _Track(prompt=int(instances.prompt_index[column]), first_stamp=stamp,
                       last_seen=stamp, box=instances.boxes[column].astype(np.float64),
                       box_velocity=np.zeros(2),
                       position=instances.targets.centroids[column].copy(),
                       velocity=np.zeros(3))
        self._remember(track, instances, column)
        self._confirm(track)
        return track

    def _confirm(self, track: _Track) -> None:
        if not track.track_id and track.hits >= self.settings.min_frames:
            track.track_id, self._next_id = self._next_id, self._next_id + 1

    @staticmethod
    def _remember(track: _Track, instances: Instances, column: int) -> None:
        targets = instances.targets
        track.score = float(instances.score[column])
        track.centroid = instances.centroids[column].copy()
        track.raw = targets.centroids[column].copy()
        track.extent = (targets.extent_min[column].copy(), targets.extent_max[column].copy())

    def _correct(self, track: _Track, instances: Instances, column: int, stamp: float) -> None:
        """The alpha-beta step of a track seen again."""
        dt = stamp - track.last_seen
        box, position = track.predicted(stamp)
        measured_box = instances.boxes[column].astype(np.float64)
        residual = measured_box[:2] - box[:2]
        track.box = np.concatenate([box[:2] + BOX_SMOOTHING * residual, measured_box[2:]])
        if dt > 0:
            track.box_velocity = track.box_velocity + BOX_SMOOTHING ** 2 / (
                2 - BOX_SMOOTHING) * residual / dt
        raw = instances.targets.centroids[column]
        alpha = self.settings.smoothing
        if not np.isfinite(raw).all():
            pass  # no depth this frame: the 3D state waits
        elif not np.isfinite(position).all():
            track.position, track.velocity = raw.copy(), np.zeros(3)
        else:
            residual = raw - position
            track.position = position + alpha * residual
            if dt > 0:
                velocity = track.velocity + alpha ** 2 / (2 - alpha) * residual / dt
                speed = float(np.sqrt(velocity @ velocity))
                track.velocity = velocity * min(1.0, MAX_SPEED_M_S / max(speed, 1e-12))
        track.last_seen = stamp
        track.hits += 1
        track.missed = 0
        self._remember(track, instances, column)
        self._confirm(track)

    def _report(self, instances: Instances, stamp: float, index_of: dict) -> TrackedObjects:
        result = TrackedObjects.untracked(instances)
        for track in self._tracks:
            column = index_of.get(id(track))
            if column is not None:
                # A track not reported yet (track_id 0) is not tracked for the reader: the
                # instance keeps its raw centroid as the smoothed one.
                if track.track_id:
                    result.track_ids[column] = track.track_id
                    result.age_frames[column] = track.frames
                    result.age_seconds[column] = stamp - track.first_stamp
                    if np.isfinite(track.position).all():
                        result.smoothed[column] = track.position
            elif track.track_id:
                result.coasting.append(CoastingTrack(
                    track.track_id, track.prompt, track.score, track.box.round().astype(int),
                    track.centroid, track.position.copy(), track.extent[0], track.extent[1],
                    track.frames, stamp - track.first_stamp, track.missed))
        return result
