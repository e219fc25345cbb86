"""
Tracks over generated sequences with ground-truth identities: no identity switch while objects
and camera move, an object hidden for a few frames comes back with its id, two objects passing
each other keep theirs, and the smoothed 3D centroid jitters less than the raw one.

The masks flicker as CLIPSeg's do: every frame, each object's mask is eroded or dilated by a
random 0 to 2 pixels before it becomes the prompt's label image.
"""

from clipseg_ros.core.appearance import colour_signatures
from clipseg_ros.core.depth_targets import depth_in_metres
from clipseg_ros.core.instances import find_instances, InstanceSettings
from clipseg_ros.core.tracks import InstanceTracker, MAX_COASTING_PER_PROMPT, TrackerSettings
from clipseg_ros.tools.scene_sequences import moving_objects, passing_pair
import cv2
import numpy as np
import pytest
from scene_truth import camera_of, surface_median

KINDS = [('circle', 'red'), ('square', 'green')]


def flickering_labels(scene, rng: np.random.Generator) -> np.ndarray:
    labels = np.zeros(scene.depth_m.shape, np.uint8)
    for item in scene.objects:
        mask = item.mask.view(np.uint8)
        radius = int(rng.integers(0, 3))
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        mask = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(mask, kernel).view(bool)
        labels[mask & (labels == 0)] = KINDS.index(item.kind) + 1
    return labels


def run(frames, settings: TrackerSettings, with_depth: bool = True, seed: int = 0):
    """Track a sequence; per frame, {identity: (track_id, raw, smoothed, truth)}."""
    rng = np.random.default_rng(seed)
    tracker = InstanceTracker(settings)
    history = []
    for frame in frames:
        scene = frame.scene
        labels = flickering_labels(scene, rng)
        confidence = np.where(labels > 0, 0.8, 0.0).astype(np.float32)
        depth = depth_in_metres(scene.depth_mm(), '16UC1', 10.0) if with_depth else None
        instances = find_instances(labels, confidence, len(KINDS), InstanceSettings(
            min_pixels=30), depth, camera_of(scene) if with_depth else None)
        tracked = tracker.update(instances, frame.stamp, prompt_version=1)
        seen = {}
        for k in range(len(instances)):
            pixels = instances.image == k + 1
            overlaps = [(pixels & item.mask).sum() for item in scene.objects]
            best = int(np.argmax(overlaps))
            assert overlaps[best] > 0.5 * pixels.sum(), 'an instance on no object'
            item = scene.objects[best]
            seen[frame.identities[best]] = (int(tracked.track_ids[k]),
                                            instances.targets.centroids[k],
                                            tracked.smoothed[k], surface_median(scene, item.mask))
        history.append(seen)
    return history


def ids_per_identity(history) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for seen in history:
        for identity, (track_id, *_) in seen.items():
            if track_id:
                found.setdefault(identity, set()).add(track_id)
    return found


def test_moving_objects_and_camera_keep_one_track_id_each_over_60_frames():
    frames = moving_objects(seed=2, frames=60)
    history = run(frames, TrackerSettings(min_frames=3))
    found = ids_per_identity(history)
    assert set(found) == {0, 1, 2}
    assert all(len(ids) == 1 for ids in found.values()), found
    assert len({next(iter(ids)) for ids in found.values()}) == 3
    # Reported from the third frame on, in every frame after.
    assert all(all(seen[i][0] for i in (0, 1, 2)) for seen in history[2:])
    assert not any(track_id for track_id, *_ in history[0].values())


@pytest.mark.parametrize('hidden_frames, same_id', [(8, True), (10, False)])
def test_an_object_hidden_for_up_to_max_missed_frames_comes_back_with_its_id(hidden_frames,
                                                                             same_id):
    frames = moving_objects(seed=3, frames=40, hidden=range(15, 15 + hidden_frames))
    history = run(frames, TrackerSettings(min_frames=2, max_missed_frames=8))
    assert all(1 not in seen for seen in history[15:15 + hidden_frames])
    before = history[14][1][0]
    after = history[15 + hidden_frames + 1][1][0]
    assert before > 0
    assert (after == before) == same_id
    if not same_id:  # lost: it comes back as a new track, never with an old id
        assert after == 0 or after > max(max(ids) for ids in ids_per_identity(history[:15])
                                         .values())


@pytest.mark.parametrize('with_depth', [True, False])
def test_two_objects_passing_each_other_keep_their_ids(with_depth):
    frames = passing_pair(seed=1, frames=60)
    # They overlap in the image in the middle of the sequence.
    overlapping = [f for f in frames if cv2.connectedComponents(
        f.scene.mask_of('circle', 'red').view(np.uint8))[0] == 2]
    assert len(overlapping) >= 5
    history = run(frames, TrackerSettings(min_frames=2, max_missed_frames=10),
                  with_depth=with_depth)
    found = ids_per_identity(history)
    assert set(found) == {0, 1} and all(len(ids) == 1 for ids in found.values()), found
    assert found[0] != found[1]
    assert all(len(seen) == 2 for seen in history[-5:])  # both there at the end


def test_the_smoothed_centroid_jitters_less_than_the_raw_one():
    frames = moving_objects(seed=4, frames=60)
    history = run(frames, TrackerSettings(min_frames=1, smoothing=0.4))
    raw_steps, smooth_steps = [], []
    for before, after in zip(history[10:], history[11:]):
        for identity in (0, 1):
            if identity in before and identity in after:
                truth_step = after[identity][3] - before[identity][3]
                raw_steps.append(after[identity][1] - before[identity][1] - truth_step)
                smooth_steps.append(after[identity][2] - before[identity][2] - truth_step)
    raw = np.sqrt(np.mean(np.sum(np.square(raw_steps), axis=1)))
    smooth = np.sqrt(np.mean(np.sum(np.square(smooth_steps), axis=1)))
    print(f'frame-to-frame jitter of the 3D centroid: raw {raw * 1000:.2f} mm, '
          f'smoothed {smooth * 1000:.2f} mm ({len(raw_steps)} steps)')
    assert smooth < 0.7 * raw


def test_tracks_restart_on_a_prompt_change_and_ids_are_never_reused():
    frames = moving_objects(seed=5, frames=6)
    rng = np.random.default_rng(0)
    tracker = InstanceTracker(TrackerSettings(min_frames=1))
    given = []
    for version in (1, 2):
        for frame in frames[:3]:
            labels = flickering_labels(frame.scene, rng)
            instances = find_instances(labels, (labels > 0).astype(np.float32), 2)
            tracked = tracker.update(instances, frame.stamp, prompt_version=version)
        given.append(set(tracked.track_ids.tolist()))
        # A read-only match of the frame just tracked gives the same ids, changes nothing.
        np.testing.assert_array_equal(tracker.match(instances, frame.stamp, version),
                                      tracked.track_ids)
        np.testing.assert_array_equal(tracker.match(instances, frame.stamp, version + 7), 0)
    assert len(given[0]) == 3 and len(given[1]) == 3 and not given[0] & given[1]
    tracker.reset()
    instances = find_instances(flickering_labels(frames[3].scene, rng),
                               np.ones((240, 320), np.float32), 2)
    after_reset = set(tracker.update(instances, frames[3].stamp, 1).track_ids.tolist())
    assert not after_reset & (given[0] | given[1])


def test_a_track_not_seen_is_reported_as_coasting_until_lost():
    frames = moving_objects(seed=6, frames=12, hidden=range(5, 12))
    rng = np.random.default_rng(1)
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=3))
    coasting = []
    for frame in frames:
        labels = flickering_labels(frame.scene, rng)
        depth = depth_in_metres(frame.scene.depth_mm(), '16UC1', 10.0)
        instances = find_instances(labels, (labels > 0).astype(np.float32), 2,
                                   depth_m=depth, camera=camera_of(frame.scene))
        coasting.append(tracker.update(instances, frame.stamp, 1).coasting)
    assert [len(c) for c in coasting] == [0] * 5 + [1, 1, 1] + [0] * 4
    first = coasting[5][0]
    assert first.missed_frames == 1 and np.isfinite(first.smoothed).all()
    assert [c[0].missed_frames for c in coasting[5:8]] == [1, 2, 3]


def test_tracks_not_seen_stay_bounded_when_the_mask_flickers_everywhere():
    """
    Specks that appear somewhere new every frame each start a track; with track_min_frames 1
    and a long track_max_missed_frames they would all be kept, thousands after a few hundred
    frames. The tracks of a prompt not seen in a frame are capped, the longest missed dropped.
    """
    rng = np.random.default_rng(3)
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=1000))
    largest = 0
    for index in range(200):
        labels = np.zeros((240, 320), np.uint8)
        for _ in range(10):  # 10 squares a frame, each where none was the frame before
            y, x = rng.integers(0, 230), rng.integers(0, 310)
            labels[y:y + 8, x:x + 8] = 1 + int(rng.integers(0, 2))
        instances = find_instances(labels, (labels > 0).astype(np.float32), 2,
                                   InstanceSettings(min_pixels=10, max_per_prompt=20))
        tracked = tracker.update(instances, index / 15.0, prompt_version=1)
        largest = max(largest, len(tracked.coasting))
        ids = [t.track_id for t in tracked.coasting] + [i for i in tracked.track_ids if i]
        assert len(ids) == len(set(ids)), 'a track id twice in one frame'
    assert 2 * MAX_COASTING_PER_PROMPT >= largest >= MAX_COASTING_PER_PROMPT
    # The ones kept are the most recently seen.
    assert max(track.missed_frames for track in tracked.coasting) < 20


def test_an_instance_without_a_track_id_yet_keeps_its_raw_centroid_as_the_smoothed_one():
    """Until a track is reported (track_min_frames), its instance reads as not tracked."""
    frames = moving_objects(seed=7, frames=4)
    rng = np.random.default_rng(2)
    tracker = InstanceTracker(TrackerSettings(min_frames=3, smoothing=0.3))
    for index, frame in enumerate(frames):
        labels = flickering_labels(frame.scene, rng)
        depth = depth_in_metres(frame.scene.depth_mm(), '16UC1', 10.0)
        instances = find_instances(labels, (labels > 0).astype(np.float32), 2,
                                   depth_m=depth, camera=camera_of(frame.scene))
        tracked = tracker.update(instances, frame.stamp, 1)
        raw = instances.targets.centroids
        assert np.isfinite(raw).all() and len(instances) == 3
        if index < 2:
            assert not tracked.track_ids.any()
            np.testing.assert_array_equal(tracked.smoothed, raw)
        else:  # reported: the filter's value, which lags the moving objects' raw one
            assert tracked.track_ids.all()
            assert (np.linalg.norm(tracked.smoothed - raw, axis=1) > 1e-6).all()


def squares_instances(corners, size: int = 16, shape=(120, 160)):
    """One prompt's instances of ``size`` px squares at (x, y) corners, and a flat colour."""
    labels = np.zeros(shape, np.uint8)
    for x, y in corners:
        labels[y:y + size, x:x + size] = 1
    instances = find_instances(labels, labels.astype(np.float32), 1,
                               InstanceSettings(min_pixels=10))
    rgb = np.zeros(shape + (3,), np.uint8)
    rgb[..., 0] = 200
    return instances, colour_signatures(rgb, instances.image, len(instances))


def step(tracker: InstanceTracker, corners, stamp: float):
    """The tracker's update on squares at ``corners``, with their colour signatures."""
    instances, signatures = squares_instances(corners)
    return tracker.update(instances, stamp, 1, signatures)


def test_an_object_taken_out_of_a_merged_block_is_no_longer_held():
    """
    Four squares seen apart, then touching in a 2x2 block (one region, all four held); one
    corner taken away leaves the block's outer box as it was: its track is no longer held
    (it coasts, then is lost), the other three stay held.
    """
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=3))
    apart = [(40, 40), (58, 40), (40, 58), (58, 58)]
    block = [(40, 40), (56, 40), (40, 56), (56, 56)]
    for index in range(3):
        instances, _ = squares_instances(apart)
        tracked = tracker.update(instances, index / 15.0, 1)
    ids = {tuple(box[:2]): int(i) for box, i in zip(instances.boxes.tolist(),
                                                    tracked.track_ids)}
    assert sorted(ids.values()) == [1, 2, 3, 4]
    tracked = tracker.update(squares_instances(block)[0], 3 / 15.0, 1)
    assert sorted(tracked.merged[0]) == [1, 2, 3, 4]
    removed = ids[(58, 58)]
    for index in range(4, 8):
        instances, _ = squares_instances(block[:3])
        tracked = tracker.update(instances, index / 15.0, 1)
        assert len(instances) == 1
        assert sorted(tracked.merged[0]) == sorted(set(ids.values()) - {removed})
        coasting = {track.track_id: track for track in tracked.coasting}
        if removed in coasting:
            assert not coasting[removed].held
            assert coasting[removed].missed_frames == index - 3
    assert removed not in coasting  # lost after max_missed_frames
    assert all(coasting[i].held for i in ids.values() if i != removed)


@pytest.mark.parametrize('back_at, same_id', [((70, 50), True), ((130, 90), False),
                                              ((10, 90), False)])
def test_a_look_alike_far_from_where_a_track_was_lost_gets_a_new_id(back_at, same_id):
    """
    A red square (no depth) tracked, then gone long enough to be lost; a square of the same
    colour comes back near where it left (its id back) or far from it, not at the border it
    left by (a new id: a second object of the kind, not the lost one).
    """
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=2))
    for index in range(3):
        tracked = step(tracker, [(60, 50)], index / 15.0)
    first = int(tracked.track_ids[0])
    for index in range(3, 7):
        tracked = step(tracker, [], index / 15.0)
    assert not tracked.coasting
    tracked = step(tracker, [back_at], 7 / 15.0)
    assert (int(tracked.track_ids[0]) == first) == same_id
    assert tracked.track_ids[0] != 0


def test_an_object_back_at_the_border_it_left_by_gets_its_id_back():
    """Out on the right for 2 s (no depth): back at the right border further down, its id."""
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=2))
    for index in range(3):
        tracked = step(tracker, [(144, 10)], index / 15.0)
    first = int(tracked.track_ids[0])
    for index in range(3, 33):
        step(tracker, [], index / 15.0)
    tracked = step(tracker, [(144, 100)], 33 / 15.0)
    assert tracked.track_ids[0] == first


def signatures_by_hand(rgb: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray:
    """Each instance's colour cells counted pixel by pixel and normalised (the definition)."""
    expected = np.zeros((count, 64), np.float64)
    for (row, column), owner in np.ndenumerate(owners):
        if 1 <= owner <= count:
            r, g, b = (int(v) >> 6 for v in rgb[row, column])
            expected[owner - 1, (r << 4) | (g << 2) | b] += 1
    totals = expected.sum(axis=1, keepdims=True)
    return (expected / np.maximum(totals, 1)).astype(np.float32)


@pytest.mark.parametrize('dtype', [np.uint16, np.int32, np.uint8])
@pytest.mark.parametrize('count', [1, 5, 1022, 1500])
def test_colour_signatures_count_each_instance_pixel_once_for_any_owner_image(dtype, count):
    """The histogram path (uint16 owners, the box around them) and the general one agree with
    counting by hand, ids above ``count`` and below 1 (signed images) left out, views too."""
    rng = np.random.default_rng(count)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    low = -3 if np.issubdtype(dtype, np.signedinteger) else 0
    owners = rng.integers(low, min(count + 3, np.iinfo(dtype).max) + 1, (23, 31)).astype(dtype)
    owners[:5] = 0  # the box around the instances is not the frame
    for image, ids in ((rgb, owners), (rgb[::-1, ::2], owners[::-1, ::2])):
        np.testing.assert_array_equal(colour_signatures(image, ids, count),
                                      signatures_by_hand(image, ids, count))
    empty = colour_signatures(rgb[:0], owners[:0], count)
    assert empty.shape == (count, 64) and not empty.any()
