"""rviz markers refilled from a camera's pool are the markers built afresh, frame after frame."""

from clipseg_ros.core.overlay import PALETTE
from clipseg_ros.object_messages import MarkerPool, object_markers, OBJECT_NAMESPACES
from clipseg_ros_interfaces.msg import Instance
from geometry_msgs.msg import Point, Vector3
import numpy as np
from output_record import field_bytes
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker


def tracked(track_id: int, centre, low, high, prompt: int = 0, seen: bool = True) -> Instance:
    return Instance(prompt_index=prompt, label=f'prompt {prompt}', track_id=track_id,
                    seen_this_frame=seen, centroid_3d_smoothed=Point(x=centre[0], y=centre[1],
                                                                     z=centre[2]),
                    extent_min_3d=Point(x=low[0], y=low[1], z=low[2]),
                    extent_max_3d=Point(x=high[0], y=high[1], z=high[2]))


def frames(count: int = 12, seed: int = 0):
    """Tracks that move, appear, vanish and lose their extent, frame by frame."""
    rng = np.random.default_rng(seed)
    for frame in range(count):
        entries = []
        for track_id in range(1, 6):
            if (frame + track_id) % 4 == 0:
                continue  # not seen this frame: its markers go
            centre = rng.uniform(-0.5, 1.5, 3)
            low, high = centre - rng.uniform(0, 0.1, 3), centre + rng.uniform(0, 0.1, 3)
            if frame % 5 == track_id % 5:
                low = high = np.full(3, np.nan)  # no extent: the box falls back
            entries.append(tracked(track_id, centre, low, high, prompt=track_id % 3,
                                   seen=bool(frame % 3)))
        header = Header(frame_id='camera_optical')
        header.stamp.sec = frame
        yield header, entries


def expected_markers(header: Header, entry: Instance) -> list[Marker]:
    """A tracked object's sphere, extent box and label, each a new Marker built in full."""
    centre = np.array([entry.centroid_3d_smoothed.x, entry.centroid_3d_smoothed.y,
                       entry.centroid_3d_smoothed.z])
    low = np.array([entry.extent_min_3d.x, entry.extent_min_3d.y, entry.extent_min_3d.z])
    high = np.array([entry.extent_max_3d.x, entry.extent_max_3d.y, entry.extent_max_3d.z])
    size = np.maximum(np.nan_to_num(high - low, nan=0.0), 0.005)
    middle = np.where(np.isfinite(low + high), (low + high) / 2.0, centre)
    alpha = 0.9 if entry.seen_this_frame else 0.4
    red, green, blue = (float(c) / 255.0 for c in PALETTE[entry.prompt_index + 1])

    def point(row) -> Point:
        return Point(x=float(row[0]), y=float(row[1]), z=float(row[2]))

    common = dict(header=header, id=entry.track_id, action=Marker.ADD)
    sphere = Marker(ns=OBJECT_NAMESPACES[0], type=Marker.SPHERE, **common,
                    color=ColorRGBA(r=red, g=green, b=blue, a=alpha),
                    scale=Vector3(x=0.03, y=0.03, z=0.03))
    sphere.pose.position = point(centre)
    box = Marker(ns=OBJECT_NAMESPACES[1], type=Marker.CUBE, **common,
                 color=ColorRGBA(r=red, g=green, b=blue, a=alpha / 3),
                 scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
    box.pose.position = point(middle)
    label = Marker(ns=OBJECT_NAMESPACES[2], type=Marker.TEXT_VIEW_FACING, **common,
                   text=f'{entry.label} #{entry.track_id}',
                   color=ColorRGBA(r=red, g=green, b=blue, a=alpha), scale=Vector3(z=0.04))
    label.pose.position = point(centre - np.array([0.0, 0.05 + size[1] / 2.0, 0.0]))
    for marker in (sphere, box, label):
        marker.pose.orientation.w = 1.0
    return [sphere, box, label]


def test_pooled_markers_are_markers_built_in_full_every_frame():
    """Refilled from the pool, frame after frame, each marker serialises as a new one built
    with every field set; tracks gone get their DELETE."""
    pool, shown = MarkerPool(), set()
    sent = deleted = 0
    for header, entries in frames():
        before = set(shown)
        markers, shown = object_markers(header, entries, shown, pool)
        # Serialised at once, as publishing does: the pool refills these objects next frame.
        sent_bytes = [field_bytes(marker) for marker in markers]
        expected = [marker for entry in entries for marker in expected_markers(header, entry)]
        gone = sorted(before - {entry.track_id for entry in entries})
        expected += [Marker(header=header, ns=ns, id=track_id, action=Marker.DELETE)
                     for track_id in gone for ns in OBJECT_NAMESPACES]
        assert sent_bytes == [field_bytes(marker) for marker in expected]
        assert shown == {entry.track_id for entry in entries}
        sent += sum(marker.action == Marker.ADD for marker in markers)
        deleted += len(gone)
    assert sent > 60 and deleted > 5  # the sequence drew markers and took some away


def test_the_pool_forgets_the_markers_of_tracks_gone_and_stays_bounded():
    pool = MarkerPool()
    header = Header(frame_id='camera_optical')
    _, shown = object_markers(header, [tracked(7, (0.0, 0.0, 1.0), (-0.1,) * 3, (0.1,) * 3)],
                              set(), pool)
    assert len(pool._markers) == 3
    markers, shown = object_markers(header, [], shown, pool)
    assert [marker.action for marker in markers] == [Marker.DELETE] * 3
    assert not pool._markers and not shown
    for marker_id in range(MarkerPool.MAX_MARKERS + 5):
        pool.marker(OBJECT_NAMESPACES[0], marker_id)
    assert len(pool._markers) <= MarkerPool.MAX_MARKERS
