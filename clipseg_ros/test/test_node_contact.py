"""
Identities through contact, through the node (in process over loopback DDS, the installed
package with its trained miniature model and aligned depth): two red circles at one depth
approach, touch (one region for about ten frames) and part. Each keeps its track id; while they
touch, the merged instance has no track id and names both tracks, which are listed as held.
"""

from clipseg_ros.tools.tracking_scenarios import touch_and_part
import pytest
from test_node_objects import identity_of, objects_node, send  # noqa: F401 - a fixture


@pytest.fixture(scope='module')
def contact_frames():
    return touch_and_part(2).frames


def test_two_circles_that_touch_and_part_keep_their_ids_through_the_node(
        objects_node, contact_frames):  # noqa: F811 - the fixture imported above
    ids: dict[int, set[int]] = {}
    merged_frames = 0
    for frame in contact_frames:
        segmentation = send(objects_node, frame.scene)
        seen = [i for i in segmentation.instances if i.seen_this_frame]
        held = {i.track_id for i in segmentation.instances if i.held}
        merged = [i for i in seen if len(i.merged_track_ids)]
        if merged:
            merged_frames += 1
            assert len(merged) == 1 and merged[0].track_id == 0
            assert set(merged[0].merged_track_ids) == held and len(held) == 2
            assert all(not i.seen_this_frame and i.missed_frames == 0
                       for i in segmentation.instances if i.held)
        for instance in seen:
            identity = identity_of(instance, frame)
            if instance.track_id and not instance.merged_track_ids:
                assert identity in (0, 1), 'a tracked instance on no red circle'
                ids.setdefault(identity, set()).add(instance.track_id)
    assert merged_frames >= 5
    assert len(ids) == 2 and all(len(v) == 1 for v in ids.values()), ids
    assert ids[0] != ids[1]
    # Both parts are tracked again at the end, each by its own id.
    assert sorted(i.track_id for i in segmentation.instances if i.seen_this_frame
                  and i.track_id) == sorted(ids[0] | ids[1])
