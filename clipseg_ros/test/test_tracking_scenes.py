"""
Tracks on the tracking benchmark's scenes (clipseg_ros.tools.tracking_scenarios), through the
real instances (find_instances with depth) and colour signatures: identities through contact,
merged instances that no track takes, an object back after its track was lost; and the
benchmark's metric code (TrackEval) on a case worked out by hand.
"""

from clipseg_ros.core.appearance import colour_signatures
from clipseg_ros.core.instances import find_instances, InstanceSettings
from clipseg_ros.core.tracks import InstanceTracker, TrackerSettings
from clipseg_ros.tools.mot_scoring import box_iou_xywh, FrameBoxes, score
from clipseg_ros.tools.tracker_runs import camera_model, detect, run_node_tracker, truth
from clipseg_ros.tools.tracking_scenarios import observations, occlusion, touch_and_part
import numpy as np
import pytest


def ids_of_identities(ground_truth, output) -> dict[int, set[int]]:
    """For each true identity, the ids of the output boxes on it (IoU >= 0.5)."""
    found: dict[int, set[int]] = {}
    for frame_truth, frame_output in zip(ground_truth, output):
        iou = box_iou_xywh(frame_truth.boxes, frame_output.boxes)
        for row, identity in enumerate(frame_truth.ids):
            for column in np.flatnonzero(iou[row] >= 0.5):
                found.setdefault(identity, set()).add(frame_output.ids[column])
    return found


@pytest.mark.parametrize('count', [2, 3])
def test_objects_of_one_kind_that_touch_and_part_keep_their_ids(count):
    scenario = touch_and_part(count)
    detected = detect(observations(scenario), camera_model(scenario))
    merges, last_own = [], {}

    def each(frame, tracked):
        instances = frame.instances
        for column, held in enumerate(tracked.merged):
            if held:
                # No track takes the merged region: not its id, not its centroid.
                assert tracked.track_ids[column] == 0
                np.testing.assert_array_equal(tracked.smoothed[column],
                                              instances.targets.centroids[column])
                merges.append((frame.observation.index, set(held)))
                # Each held track stays where it last was on its own.
                for track in tracked.coasting:
                    if track.track_id in held:
                        assert track.held and track.missed_frames == 0
                        np.testing.assert_array_equal(track.smoothed, last_own[track.track_id])
        for column in np.flatnonzero(tracked.track_ids):
            last_own[int(tracked.track_ids[column])] = tracked.smoothed[column].copy()

    ground_truth = truth(detected)
    output = run_node_tracker(detected, TrackerSettings(), each=each)
    found = ids_of_identities(ground_truth, output)
    assert set(found) == set(range(count))
    assert all(len(ids) == 1 for ids in found.values()), found
    assert len(set().union(*found.values())) == count
    # The objects were one region for several frames, and it held every track in it.
    assert len(merges) >= 5
    assert max(len(held) for _, held in merges) == count
    scores = score(ground_truth, output)
    assert scores.id_switches == 0 and scores.idf1 >= 0.95, scores


@pytest.mark.parametrize('with_signatures', [True, False])
def test_an_object_back_after_its_track_was_lost_gets_its_id_back_by_its_colours(
        with_signatures):
    """Hidden 20 frames (lost after 10): the colour cue gives its id back; without it, new."""
    scenario = occlusion(20)
    detected = detect(observations(scenario), camera_model(scenario))
    ground_truth = truth(detected)
    output = run_node_tracker(detected, TrackerSettings(max_missed_frames=10),
                              with_signatures=with_signatures)
    before = ids_of_identities(ground_truth[:15], output[:15])
    after = ids_of_identities(ground_truth[40:], output[40:])
    assert all(len(ids) == 1 for ids in before.values()) and set(before) == {0, 1, 2}
    assert after[0] == before[0] and after[2] == before[2]
    assert (after[1] == before[1]) == with_signatures
    if not with_signatures:  # a new id, never one of another object
        assert not after[1] & (before[0] | before[2])


def test_a_lost_track_is_not_given_back_after_track_reid_seconds():
    scenario = occlusion(20)
    detected = detect(observations(scenario), camera_model(scenario))
    ground_truth = truth(detected)
    output = run_node_tracker(detected, TrackerSettings(max_missed_frames=10,
                                                        reid_seconds=0.3))
    before = ids_of_identities(ground_truth[:15], output[:15])
    after = ids_of_identities(ground_truth[40:], output[40:])
    assert after[1] != before[1] and after[0] == before[0]


def test_the_metric_code_gives_the_scores_worked_out_by_hand():
    """
    Two objects over four frames. The tracker follows A as id 1, then as id 3 (one switch),
    B as id 2 but misses it in the last frame, and puts a box where nothing is in frame 0.

    CLEAR: 7 TP, 1 FN, 1 FP, 1 switch over 8 true boxes: MOTA = 1 - 3 / 8 = 0.625.
    Identity: A-1 (2) and B-2 (3) give IDTP 5 of 8 true and 8 tracker boxes:
    IDF1 = 10 / 16 = 0.625. HOTA (IoU 1 or 0, so at every threshold): DetA = 7 / 9;
    AssA = (2 x 2/4 + 2 x 2/4 + 3 x 3/4) / 7; HOTA = sqrt(DetA x AssA) = sqrt(4.25 / 9).
    """
    a, b, nowhere = [10, 10, 20, 20], [100, 10, 20, 20], [200, 200, 10, 10]
    ground_truth = [FrameBoxes([7, 8], np.array([a, b]))] * 4
    tracked = [FrameBoxes([1, 2, 9], np.array([a, b, nowhere])),
               FrameBoxes([1, 2], np.array([a, b])), FrameBoxes([3, 2], np.array([a, b])),
               FrameBoxes([3], np.array([a]))]
    scores = score(ground_truth, tracked)
    assert (scores.true_positives, scores.misses, scores.false_positives,
            scores.id_switches) == (7, 1, 1, 1)
    assert scores.mota == pytest.approx(0.625)
    assert scores.idf1 == pytest.approx(0.625)
    assert scores.hota == pytest.approx(np.sqrt(4.25 / 9))


def test_blobs_that_merge_and_part_at_random_keep_the_reports_consistent():
    """
    Squares of one prompt that wander, overlap and part at random (with colour signatures of
    a random image): in every frame an id is reported once, a merged instance has no id and
    names only tracks listed as held (the bound on tracks kept: test_tracks.py).
    """
    rng = np.random.default_rng(11)
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=30))
    rgb = rng.integers(0, 256, (120, 160, 3), np.uint8)
    centres = rng.uniform(20, 100, (6, 2))
    merged_seen = 0
    for index in range(300):
        centres = np.clip(centres + rng.normal(0, 4, centres.shape), 10, [150, 110])
        labels = np.zeros((120, 160), np.uint8)
        for x, y in centres[rng.random(len(centres)) > 0.1].astype(int):
            labels[y - 8:y + 8, x - 8:x + 8] = 1
        instances = find_instances(labels, labels.astype(np.float32), 1,
                                   InstanceSettings(min_pixels=10))
        tracked = tracker.update(instances, index / 15.0, 1,
                                 colour_signatures(rgb, instances.image, len(instances)))
        ids = [i for i in tracked.track_ids.tolist() if i] + [t.track_id for t in
                                                               tracked.coasting]
        assert len(ids) == len(set(ids)), 'an id twice in one frame'
        held = {t.track_id for t in tracked.coasting if t.held}
        named = set()
        for column, merged in enumerate(tracked.merged):
            if merged:
                merged_seen += 1
                assert tracked.track_ids[column] == 0 and len(merged) >= 2
                named |= set(merged)
        assert named == held
    assert merged_seen > 10


def test_colours_decide_between_pairs_whose_positions_cost_about_the_same():
    """
    A red and a blue square of one prompt, without depth, side by side; then (a jump, as after
    dropped frames) one square below and one above the pair's middle, each a little nearer to
    the other's old place: by position alone each track takes the other's square, with the
    colours each keeps its own.
    """
    def frame(red: tuple[int, int], blue: tuple[int, int]):
        rgb = np.full((80, 120, 3), 128, np.uint8)
        labels = np.zeros((80, 120), np.uint8)
        for (x, y), colour in ((red, (220, 30, 30)), (blue, (30, 30, 220))):
            rgb[y:y + 20, x:x + 20] = colour
            labels[y:y + 20, x:x + 20] = 1
        instances = find_instances(labels, labels.astype(np.float32), 1,
                                   InstanceSettings(min_pixels=10))
        assert len(instances) == 2
        red_column = int(np.argmin(np.abs(instances.boxes[:, :2] - red).sum(axis=1)))
        return instances, colour_signatures(rgb, instances.image, len(instances)), red_column

    for with_colour in (True, False):
        tracker = InstanceTracker(TrackerSettings(min_frames=1))
        for index in range(3):
            instances, signatures, red = frame((30, 30), (60, 30))
            tracked = tracker.update(instances, index / 15.0, 1,
                                     signatures if with_colour else None)
        red_id = tracked.track_ids[red]
        instances, signatures, red = frame((47, 48), (43, 12))
        tracked = tracker.update(instances, 3 / 15.0, 1, signatures if with_colour else None)
        assert tracked.track_ids.all()
        assert (tracked.track_ids[red] == red_id) == with_colour
