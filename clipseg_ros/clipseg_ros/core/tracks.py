"""
Identities that last from frame to frame: one camera's instances associated with the tracks of
the previous frames. numpy and scipy, no ROS.

Association, per prompt (an instance never joins a track of another prompt), is in
core/track_association.py: 3D distance to the predicted centroid gated at ``gate_m`` where both
sides have depth (objects that pass each other in the image at different depths stay apart in
3D), box overlap besides or alone, the colour signature (core/appearance.py) where the frame is
given; the pairs of least total cost (scipy's linear_sum_assignment).

Contact: an instance over the predictions of two or more reported tracks (same-kind objects
touching at one depth) continues none of them. The tracks are held where they last were on
their own, not lost while the merge lasts, and the instance names them; when the region parts,
each part goes back to the held track it is nearest to.

Return: a reported track lost after ``max_missed_frames`` is remembered for ``reid_seconds``
(core/track_gallery.py); a new track that looks like it (colour signature) takes its id back
when it is reported, if it is where the lost object could have got to since (see there).

Smoothing: a constant-velocity alpha-beta filter on the 3D centroid (and on the box centre),
beta = alpha^2 / (2 - alpha) (Benedict-Bordner): it follows a moving object without the lag of
plain exponential smoothing and damps the frame-to-frame flicker of the mask; measurements
outside the gate never reach it. The raw per-frame centroid stays in the instance.
"""

from dataclasses import dataclass, field
import threading

from clipseg_ros.core.instances import Instances
from clipseg_ros.core.region_stats import value_counts
from clipseg_ros.core.track_association import (
    assign, association_costs, box_iou, merges, Side)
from clipseg_ros.core.track_gallery import LostTrack, LostTracks, Reach, Sighting
import numpy as np

BOX_SMOOTHING = 0.7      # the box centre follows the image quickly
MAX_SPEED_M_S = 3.0      # a velocity estimate beyond this is noise, not an object on a table
MAX_COASTING_PER_PROMPT = 32   # tracks of a prompt kept while not seen (see _bounded)
SIGNATURE_SMOOTHING = 0.3      # weight of a frame's colour signature in the track's
MERGE_MASK_SHARE = 0.5         # of a track's pixels a merged mask fills in its box (_on_masks)

__all__ = ['BOX_SMOOTHING', 'CoastingTrack', 'InstanceTracker', 'MAX_COASTING_PER_PROMPT',
           'TrackedObjects', 'TrackerSettings', 'box_iou']


@dataclass(frozen=True)
class TrackerSettings:
    """When tracks are created, reported, kept and how their 3D centroid is smoothed."""

    max_missed_frames: int = 10    # a track not seen for more frames is lost
    min_frames: int = 3            # frames in a row before a track is reported (1 = at once)
    smoothing: float = 0.5         # alpha of the filter: 1 = raw centroid, smaller = smoother
    gate_m: float = 0.1            # farthest 3D distance from the prediction to associate
    reid_seconds: float = 10.0     # a lost track's id is given back for so long (0: never)


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
    signature: np.ndarray | None = None
    pixels: float = 0.0            # the instance's usual pixel count (signature, merges)
    track_id: int = 0              # 0 until reported
    hits: int = 1
    missed: int = 0
    held: int = 0                  # frames in a merge since last seen on its own
    frames: int = 1

    def predicted(self, stamp: float) -> tuple[np.ndarray, np.ndarray]:
        dt = max(0.0, stamp - self.last_seen)
        box = self.box.copy()
        box[:2] += self.box_velocity * dt
        return box, self.position + self.velocity * dt

    def hold(self) -> None:
        """Stay where last seen on its own: the merged region says nothing of where it is."""
        self.held += 1
        self.velocity = np.zeros(3)
        self.box_velocity = np.zeros(2)


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
    held: bool = False             # inside a merged instance of this frame, not missing


@dataclass
class TrackedObjects:
    """
    Track values of a frame's K instances (track_id 0: none reported), the tracks each merged
    instance holds (empty: not a merge), and the tracks not seen in this frame.
    """

    track_ids: np.ndarray          # (K,) int64
    smoothed: np.ndarray           # (K, 3) float64, the raw centroid where not tracked
    age_frames: np.ndarray         # (K,) int64
    age_seconds: np.ndarray        # (K,) float64
    coasting: list[CoastingTrack] = field(default_factory=list)
    merged: list[tuple[int, ...]] = field(default_factory=list)

    @classmethod
    def untracked(cls, instances: Instances) -> 'TrackedObjects':
        count = len(instances)
        return cls(np.zeros(count, np.int64), instances.targets.centroids.copy(),
                   np.zeros(count, np.int64), np.zeros(count), [], [()] * count)


def _bounded(tracks: list[_Track]) -> list[_Track]:
    """
    ``tracks`` with at most MAX_COASTING_PER_PROMPT of a prompt not seen in this frame (those
    missed longest go first): a mask that flickers in new places every frame would otherwise
    keep up to max_missed_frames frames' worth of them.
    """
    coasting = [track for track in tracks if track.missed or track.held]
    if len(coasting) <= MAX_COASTING_PER_PROMPT:
        return tracks
    kept: dict[int, list[_Track]] = {}
    for track in sorted(coasting, key=lambda track: (track.missed, track.held)):
        kept.setdefault(track.prompt, []).append(track)
    keep = {id(track) for group in kept.values() for track in group[:MAX_COASTING_PER_PROMPT]}
    return [track for track in tracks
            if not (track.missed or track.held) or id(track) in keep]


def _on_masks(tracks: list[_Track], boxes: np.ndarray, image: np.ndarray,
              columns: np.ndarray) -> np.ndarray:
    """
    (T, K): whether the mask of each of the instances ``columns`` fills at least
    MERGE_MASK_SHARE of each track's usual pixel count inside its predicted box (``image``:
    the instance label image, k = instance k - 1). A count, not one pixel: noisy masks have
    holes.
    """
    height, width = image.shape
    shares = np.zeros((len(tracks), len(columns)))
    for row, (track, box) in enumerate(zip(tracks, boxes)):
        x0, y0 = (int(max(0, np.floor(value))) for value in box[:2])
        x1 = int(min(width, np.ceil(box[0] + box[2])))
        y1 = int(min(height, np.ceil(box[1] + box[3])))
        if x1 <= x0 or y1 <= y0:
            continue
        shares[row] = value_counts(image[y0:y1, x0:x1], int(columns.max()) + 2)[
            columns + 1] / max(track.pixels, 1.0)
    return shares >= MERGE_MASK_SHARE


@dataclass
class _Association:
    pairs: list[tuple[int, int]]               # (track, instance)
    merged: dict[int, list[int]]               # instance -> the tracks it holds


class InstanceTracker:
    """The tracks of one camera; track ids count up for the tracker's life, never reused."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._tracks: list[_Track] = []
        self._lost = LostTracks()
        self._next_id = 1
        self._prompt_version: int | None = None
        self._stamp: float | None = None

    def reset(self) -> None:
        """Forget every track (prompt change, cleanup); ids already given are not reused."""
        with self._lock:
            self._tracks = []
            self._lost.clear()
            self._prompt_version = None
            self._stamp = None

    def _associate(self, tracks: list[_Track], instances: Instances, stamp: float,
                   signatures: np.ndarray | None) -> _Association:
        """Pairs and merges, prompt by prompt: an instance never joins another's track."""
        result = _Association([], {})
        track_prompts = np.array([track.prompt for track in tracks], np.int64)
        targets = instances.targets
        for prompt in np.unique(instances.prompt_index):
            rows = np.flatnonzero(track_prompts == prompt)
            if not len(rows):
                continue
            columns = np.flatnonzero(instances.prompt_index == prompt)
            group = [tracks[row] for row in rows]
            predicted = [track.predicted(stamp) for track in group]
            track_side = Side(np.array([box for box, _ in predicted]),
                              np.array([position for _, position in predicted]))
            found = Side(instances.boxes[columns], targets.centroids[columns])
            if signatures is not None and all(t.signature is not None for t in group):
                track_side.signatures = np.array([track.signature for track in group])
                found.signatures = signatures[columns]
            candidates = np.array([bool(t.track_id) and t.missed == 0 for t in group])
            merged = merges(track_side, candidates, found,
                            targets.extent_min[columns], targets.extent_max[columns],
                            self.settings.gate_m,
                            lambda picked: _on_masks([group[row] for row in picked],
                                                     track_side.boxes[picked],
                                                     instances.image, columns))
            held = np.array([bool(t.held) for t in group])
            costs = association_costs(track_side, found, self.settings.gate_m, held)
            for column, held_rows in merged.items():
                costs[:, column] = np.inf
                costs[held_rows, :] = np.inf
                result.merged[int(columns[column])] = [int(rows[row]) for row in held_rows]
            result.pairs += [(int(rows[row]), int(columns[column]))
                             for row, column in assign(costs)]
        return result

    def match(self, instances: Instances, stamp: float, prompt_version: int) -> np.ndarray:
        """The reported track ids of instances, leaving the tracks as they are (0: none)."""
        ids = np.zeros(len(instances), np.int64)
        with self._lock:
            if prompt_version != self._prompt_version:
                return ids
            for row, column in self._associate(self._tracks, instances, stamp, None).pairs:
                ids[column] = self._tracks[row].track_id
        return ids

    def update(self, instances: Instances, stamp: float, prompt_version: int,
               signatures: np.ndarray | None = None) -> TrackedObjects:
        """
        Associate a frame's instances with the tracks, update them, report the frame's.
        ``signatures``: the instances' colour signatures (core/appearance.py), or None.
        """
        with self._lock:
            if prompt_version != self._prompt_version or (self._stamp is not None
                                                          and stamp < self._stamp):
                self._tracks = []  # new prompts, or time went back (a recording restarted)
                self._lost.clear()
            self._prompt_version, self._stamp = prompt_version, stamp
            tracks = self._tracks
            association = self._associate(tracks, instances, stamp, signatures)
            owner = {column: row for row, column in association.pairs}
            held = {row for rows in association.merged.values() for row in rows}
            matched = set(owner.values())
            for row, track in enumerate(tracks):
                track.frames += 1
                if row in held:
                    track.hold()
                elif row not in matched:
                    track.missed += 1
            index_of = {}  # id(track) -> the instance it was seen as in this frame
            for column in range(len(instances)):
                signature = None if signatures is None else signatures[column]
                if column in owner:
                    track = tracks[owner[column]]
                    self._correct(track, instances, column, stamp, signature)
                elif column in association.merged:
                    continue  # a merge: no track of its own
                else:
                    track = self._new_track(instances, column, stamp, signature)
                    tracks.append(track)
                index_of[id(track)] = column
            self._tracks = _bounded([t for t in tracks if self._kept(t, stamp)])
            merged_ids = {column: tuple(tracks[row].track_id for row in rows)
                          for column, rows in association.merged.items()}
            return self._report(instances, stamp, index_of, merged_ids)

    def _kept(self, track: _Track, stamp: float) -> bool:
        """Whether a track stays; a reported one that goes is remembered for its return."""
        if track.missed == 0 or (track.track_id
                                 and track.missed <= self.settings.max_missed_frames):
            return True
        if track.track_id and track.signature is not None and self.settings.reid_seconds > 0:
            self._lost.add(LostTrack(track.track_id, track.prompt, track.signature,
                                     track.box.copy(), stamp, track.position.copy(),
                                     track.last_seen, track.first_stamp, track.frames))
        return False

    def _new_track(self, instances: Instances, column: int, stamp: float,
                   signature: np.ndarray | None) -> _Track:
        track = _Track(prompt=int(instances.prompt_index[column]), first_stamp=stamp,
                       last_seen=stamp, box=instances.boxes[column].astype(np.float64),
                       box_velocity=np.zeros(2),
                       position=instances.targets.centroids[column].copy(),
                       velocity=np.zeros(3), signature=signature,
                       pixels=float(instances.pixel_count[column]))
        self._remember(track, instances, column)
        self._confirm(track, stamp, instances.image.shape)
        return track

    def _confirm(self, track: _Track, stamp: float, image_shape: tuple[int, ...]) -> None:
        if track.track_id or track.hits < self.settings.min_frames:
            return
        if self.settings.reid_seconds > 0:
            self._lost.expire(stamp, self.settings.reid_seconds)
            live = [Sighting(other.box, other.position, other.signature)
                    for other in self._tracks if other.prompt == track.prompt
                    and other.track_id and not other.missed]
            reach = Reach(MAX_SPEED_M_S, self.settings.gate_m,
                          (int(image_shape[1]), int(image_shape[0])))
            lost = self._lost.claim(track.prompt,
                                    Sighting(track.box, track.position, track.signature),
                                    stamp, reach, live)
            if lost is not None:  # the object is back: its old id and age
                track.track_id, track.first_stamp = lost.track_id, lost.first_stamp
                track.frames += lost.frames
                return
        track.track_id, self._next_id = self._next_id, self._next_id + 1

    @staticmethod
    def _remember(track: _Track, instances: Instances, column: int) -> None:
        targets = instances.targets
        track.score = float(instances.score[column])
        track.centroid = instances.centroids[column].copy()
        track.raw = targets.centroids[column].copy()
        track.extent = (targets.extent_min[column].copy(), targets.extent_max[column].copy())

    def _correct(self, track: _Track, instances: Instances, column: int, stamp: float,
                 signature: np.ndarray | None) -> None:
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
        track.missed = track.held = 0
        if signature is not None:
            self._blend_signature(track, signature, float(instances.pixel_count[column]))
        self._remember(track, instances, column)
        self._confirm(track, stamp, instances.image.shape)

    @staticmethod
    def _blend_signature(track: _Track, signature: np.ndarray, pixels: float) -> None:
        """
        Move the track's signature towards a frame's, less for fewer pixels than usual: a
        sliver at the image's edge or a mask that broke up shows mostly its rim.
        """
        if track.signature is None:
            track.signature, track.pixels = signature, pixels
            return
        weight = SIGNATURE_SMOOTHING * min(1.0, pixels / max(track.pixels, 1.0))
        track.signature = (1 - weight) * track.signature + weight * signature
        track.pixels += SIGNATURE_SMOOTHING * (pixels - track.pixels)

    def _report(self, instances: Instances, stamp: float, index_of: dict,
                merged_ids: dict[int, tuple[int, ...]]) -> TrackedObjects:
        result = TrackedObjects.untracked(instances)
        for column, ids in merged_ids.items():
            result.merged[column] = ids
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
                    track.frames, stamp - track.first_stamp, track.missed,
                    held=bool(track.held) and not track.missed))
        return result
