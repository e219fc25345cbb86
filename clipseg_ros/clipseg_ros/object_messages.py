"""
A frame's objects as messages: the Instance entries of a Segmentation message, and rviz markers
with one sphere, box and text per tracked object whose ids follow the track.
"""

from clipseg_ros.core.overlay import PALETTE
from clipseg_ros.objects import FrameObjects
from clipseg_ros_interfaces.msg import Instance
from geometry_msgs.msg import Point
import numpy as np
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

OBJECT_NAMESPACES = ('clipseg_objects', 'clipseg_object_extents', 'clipseg_object_labels')


def point_msg(row) -> Point:
    """A geometry_msgs Point from an (x, y, z) row."""
    return Point(x=float(row[0]), y=float(row[1]), z=float(row[2]))


def _box(row) -> RegionOfInterest:
    x, y, w, h = (max(0, int(v)) for v in row)
    return RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)


def instance_msgs(objects: FrameObjects, labels: list[str]) -> list[Instance]:
    """
    The instances of a frame, then its tracks not seen in it (seen_this_frame false), those
    held in a merged instance with ``held``.
    """
    instances, tracked = objects.instances, objects.tracked
    targets = instances.targets
    entries = []
    for k in range(len(instances)):
        prompt = int(instances.prompt_index[k])
        entries.append(Instance(
            prompt_index=prompt, label=labels[prompt] if prompt < len(labels) else '',
            score=float(instances.score[k]), pixel_count=int(instances.pixel_count[k]),
            box=_box(instances.boxes[k]),
            centroid=Point(x=float(instances.centroids[k][0]),
                           y=float(instances.centroids[k][1])),
            centroid_3d=point_msg(targets.centroids[k]),
            centroid_3d_smoothed=point_msg(tracked.smoothed[k]),
            extent_min_3d=point_msg(targets.extent_min[k]),
            extent_max_3d=point_msg(targets.extent_max[k]),
            depth_pixel_count=int(targets.valid_pixels[k]),
            track_id=int(tracked.track_ids[k]), track_age_frames=int(tracked.age_frames[k]),
            track_age_seconds=float(tracked.age_seconds[k]), seen_this_frame=True,
            missed_frames=0, merged_track_ids=[int(i) for i in tracked.merged[k]]))
    for track in tracked.coasting:
        prompt = track.prompt_index
        entries.append(Instance(
            prompt_index=prompt, label=labels[prompt] if prompt < len(labels) else '',
            score=float(track.score), pixel_count=0, box=_box(track.box),
            centroid=Point(x=float(track.centroid[0]), y=float(track.centroid[1])),
            centroid_3d=point_msg(np.full(3, np.nan)),
            centroid_3d_smoothed=point_msg(track.smoothed),
            extent_min_3d=point_msg(track.extent_min), extent_max_3d=point_msg(track.extent_max),
            depth_pixel_count=0, track_id=int(track.track_id),
            track_age_frames=int(track.age_frames), track_age_seconds=float(track.age_seconds),
            seen_this_frame=False, missed_frames=int(track.missed_frames), held=track.held))
    return entries


class MarkerPool:
    """
    One camera's rviz markers, kept from frame to frame by namespace and id and refilled: a
    new Marker builds a dozen nested messages, refilling one sets a few numbers. A published
    message is serialised when published, so changing it afterwards changes nothing sent.
    """

    MAX_MARKERS = 3 * 1024  # past this many (ids of tracks long gone), start afresh

    def __init__(self) -> None:
        self._markers: dict[tuple[str, int], Marker] = {}

    def marker(self, namespace: str, marker_id: int) -> Marker:
        key = (namespace, marker_id)
        marker = self._markers.get(key)
        if marker is None:
            if len(self._markers) >= self.MAX_MARKERS:
                self._markers.clear()
            marker = self._markers[key] = Marker(ns=namespace, id=marker_id)
            marker.pose.orientation.w = 1.0
        return marker

    def forget(self, namespace: str, marker_id: int) -> None:
        self._markers.pop((namespace, marker_id), None)


def _filled(marker: Marker, header: Header, kind: int, colour: tuple[float, float, float, float],
            scale: tuple[float, float, float], position) -> Marker:
    marker.header = header
    marker.type, marker.action = kind, Marker.ADD
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = colour
    marker.scale.x, marker.scale.y, marker.scale.z = scale
    point = marker.pose.position
    point.x, point.y, point.z = float(position[0]), float(position[1]), float(position[2])
    return marker


def target_markers(header: Header, namespaces: tuple[str, str, str], marker_id: int, text: str,
                   prompt_index: int, alpha: float, box_alpha: float, centre: np.ndarray,
                   middle: np.ndarray, size: np.ndarray,
                   pool: MarkerPool | None = None) -> list[Marker]:
    """
    One 3D target for rviz: a sphere at ``centre``, a box of ``size`` at ``middle`` and
    ``text`` above it, in the prompt's colour, each in its namespace with ``marker_id``
    (refilled from ``pool`` when given).
    """
    pool = pool or MarkerPool()
    red, green, blue = (float(c) / 255.0 for c in PALETTE[prompt_index + 1])
    sphere = _filled(pool.marker(namespaces[0], marker_id), header, Marker.SPHERE,
                     (red, green, blue, alpha), (0.03, 0.03, 0.03), centre)
    box = _filled(pool.marker(namespaces[1], marker_id), header, Marker.CUBE,
                  (red, green, blue, box_alpha), (float(size[0]), float(size[1]), float(size[2])),
                  middle)
    # Above the object: -y is up in the optical frame.
    label = _filled(pool.marker(namespaces[2], marker_id), header, Marker.TEXT_VIEW_FACING,
                    (red, green, blue, alpha), (0.0, 0.0, 0.04),
                    (centre[0], centre[1] - (0.05 + size[1] / 2.0), centre[2]))
    label.text = text
    return [sphere, box, label]


def object_markers(header: Header, entries: list[Instance], shown_before: set[int],
                   pool: MarkerPool | None = None) -> tuple[list[Marker], set[int]]:
    """
    Sphere, extent box and 'label #id' text per tracked object with a 3D centroid; marker id =
    track id, so rviz moves a marker instead of replacing it. Tracks shown before and gone now
    get DELETE. Returns the markers and the track ids shown now.
    """
    markers, shown = [], set()
    for entry in entries:
        centre = np.array([entry.centroid_3d_smoothed.x, entry.centroid_3d_smoothed.y,
                           entry.centroid_3d_smoothed.z])
        if not entry.track_id or not np.isfinite(centre).all():
            continue
        track_id = int(entry.track_id) % 2 ** 31  # Marker.id is int32
        shown.add(track_id)
        alpha = 0.9 if entry.seen_this_frame else 0.4
        low = np.array([entry.extent_min_3d.x, entry.extent_min_3d.y, entry.extent_min_3d.z])
        high = np.array([entry.extent_max_3d.x, entry.extent_max_3d.y, entry.extent_max_3d.z])
        size = np.maximum(np.nan_to_num(high - low, nan=0.0), 0.005)
        middle = np.where(np.isfinite(low + high), (low + high) / 2.0, centre)
        markers += target_markers(header, OBJECT_NAMESPACES, track_id,
                                  f'{entry.label} #{entry.track_id}', entry.prompt_index,
                                  alpha, alpha / 3, centre, middle, size, pool)
    for gone in sorted(shown_before - shown):
        markers += [Marker(header=header, ns=ns, id=gone, action=Marker.DELETE)
                    for ns in OBJECT_NAMESPACES]
        if pool is not None:
            for ns in OBJECT_NAMESPACES:
                pool.forget(ns, gone)
    return markers, shown
