"""rviz markers refilled from a camera's pool are the markers built afresh, frame after frame."""

from clipseg_ros.object_messages import MarkerPool, object_markers, OBJECT_NAMESPACES
from clipseg_ros_interfaces.msg import Instance
from geometry_msgs.msg import Point
import numpy as np
from output_record import field_bytes
from std_msgs.msg import Header
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


def test_pooled_markers_are_the_fresh_ones_every_frame():
    pool, shown_pooled, shown_fresh = MarkerPool(), set(), set()
    sent = 0
    for header, entries in frames():
        pooled, shown_pooled = object_markers(header, entries, shown_pooled, pool)
        # Serialised at once, as publishing does: the pool refills these objects next frame.
        pooled_bytes = [field_bytes(marker) for marker in pooled]
        fresh, shown_fresh = object_markers(header, entries, shown_fresh)
        assert pooled_bytes == [field_bytes(marker) for marker in fresh]
        assert shown_pooled == shown_fresh
        sent += sum(marker.action == Marker.ADD for marker in pooled)
    assert sent > 60  # the sequence did draw markers


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
