"""Hundreds of seeded malformed frames and requests, then a valid frame the node must answer."""

import numpy as np
import pytest

from clipseg_ros.core.depth_targets import CameraModel
from clipseg_ros.core.instances import find_instances, InstanceSettings
from clipseg_ros.core.tracks import InstanceTracker, MAX_COASTING_PER_PROMPT, TrackerSettings
from clipseg_ros.tools import fuzz
from clipseg_ros.conversions import image_to_array
from node_harness import RunningNode, encode_frame, rgb_frame

SEED = 20261125


@pytest.mark.parametrize('compressed', [False, True], ids=['raw', 'compressed'])
def test_fuzzed_frames_and_requests_leave_the_node_working(ros_context, tiny_model_dir,
                                                           compressed):
    rng = np.random.default_rng(SEED + compressed)
    harness = RunningNode(ros_context, tiny_model_dir, compressed=compressed)
    try:
        node = harness.node
        assert harness.camera.wait_for_subscriber()
        frames = 150
        for _ in range(frames):
            bad = fuzz.malformed_compressed(rng) if compressed else fuzz.malformed_image(rng)
            harness.camera.publish(bad)
        answered = refused = 0
        generators = [('text', fuzz.malformed_text_request),
                      ('image', fuzz.malformed_image_prompt_request),
                      ('segment', fuzz.malformed_segment_request)]
        for index in range(120):
            which, make = generators[index % len(generators)]
            response = harness.call(which, make(rng))  # raises if the node stops answering
            answered += 1
            refused += not response.success
            if not response.success:
                assert response.message, 'a refusal always says why'
        assert answered == 120
        assert refused > 60, 'most fuzzed requests are invalid and must be refused'
        # The node had every chance to choke: now a valid frame and a valid request.
        harness.call('text', fuzz.SetTextPrompts.Request(prompts=['mug', 'floor']))
        if compressed:
            import cv2
            from sensor_msgs.msg import CompressedImage
            ok, png = cv2.imencode('.png', rgb_frame(40, 30)[:, :, ::-1])
            good = CompressedImage(format='png')
            good.data = png.tobytes()
        else:
            good = encode_frame(rgb_frame(40, 30), 'bgr8')
        outputs = harness.send_and_wait(good)
        assert image_to_array(outputs['mask']).shape == (30, 40)
        assert outputs['segmentation'].labels == ['mug', 'floor']
        counters = node.counters
        assert counters.rejected > 0
        assert counters.failed == 0, counters.last_error
        assert counters.processed >= 1
    finally:
        harness.close()


def check_instances(instances, labels, prompt_count, settings) -> None:
    """What every find_instances result must satisfy, whatever the input."""
    count = len(instances)
    assert instances.image.shape == labels.shape and instances.image.dtype == np.uint16
    assert int(instances.image.max(initial=0)) == count
    prompts = instances.prompt_index
    assert list(prompts) == sorted(prompts) and (prompts < prompt_count).all()
    assert (np.bincount(prompts, minlength=prompt_count) <= settings.max_per_prompt).all()
    for prompt in range(prompt_count):
        scores = instances.score[prompts == prompt]
        assert list(scores) == sorted(scores, reverse=True)
    assert ((instances.score >= 0.0) & (instances.score <= 1.0)).all()
    targets = instances.targets
    for k in range(count):
        pixels = instances.image == k + 1
        rows, columns = np.nonzero(pixels)
        assert len(rows) == instances.pixel_count[k] >= settings.min_pixels
        assert (labels[pixels] == prompts[k] + 1).all(), 'an instance outside its prompt'
        assert tuple(instances.boxes[k]) == (columns.min(), rows.min(),
                                             columns.max() - columns.min() + 1,
                                             rows.max() - rows.min() + 1)
        np.testing.assert_allclose(instances.centroids[k], [columns.mean(), rows.mean()])
        assert 0 <= targets.valid_pixels[k] <= instances.pixel_count[k]
        known = np.isfinite(targets.centroids[k])
        assert known.all() == (targets.valid_pixels[k] > 0) and known.all() == known.any()
        if known.all():
            assert (targets.extent_min[k] <= targets.extent_max[k]).all()


def test_find_instances_and_the_tracker_hold_for_random_labels_and_odd_depth():
    """
    Seeded random label images (empty, one label, pixel noise, a grid of specks, blocks) with
    odd depth (none valid, huge jumps, extreme values, holes) and random settings: every result
    is well formed, and the tracker keeps unique ids and a bounded number of tracks.
    """
    rng = np.random.default_rng(SEED)
    tracker = InstanceTracker(TrackerSettings(min_frames=1, max_missed_frames=1000))
    stamp, version, previous_count = 0.0, 1, 0
    for _ in range(250):
        height, width = (int(n) for n in rng.integers(1, 90, 2))
        prompt_count = int(rng.integers(1, 6)) if rng.random() < 0.2 else max(previous_count, 1)
        labels = fuzz.random_labels(rng, height, width, prompt_count)
        confidence = rng.random((height, width)).astype(np.float32)
        settings = InstanceSettings(
            min_pixels=int(rng.choice([1, 2, 10, 50])), depth_gap=float(rng.choice([0, 0.05, 5])),
            max_per_prompt=int(rng.choice([1, 3, 255])), erosion_px=int(rng.integers(0, 4)))
        depth, camera = None, None
        if rng.random() < 0.8:
            depth = fuzz.odd_depth_m(rng, height, width)
            camera = CameraModel(width, height, float(rng.uniform(1, 1000)),
                                 float(rng.uniform(1, 1000)), float(rng.uniform(-50, 150)),
                                 float(rng.uniform(-50, 150)))
        instances = find_instances(labels, confidence, prompt_count, settings, depth, camera)
        check_instances(instances, labels, prompt_count, settings)
        # Stamps that repeat or go back; new prompts (as in the node, a new version) now and
        # then, and with every change of their count.
        stamp += float(rng.choice([0.0, 1 / 15, 2.0, -1.0]))
        version += int(rng.random() < 0.05 or prompt_count != previous_count)
        previous_count = prompt_count
        tracked = tracker.update(instances, stamp, version)
        ids = [int(i) for i in tracked.track_ids if i] + [t.track_id for t in tracked.coasting]
        assert len(ids) == len(set(ids)), 'a track id twice in one frame'
        assert len(tracked.coasting) <= prompt_count * MAX_COASTING_PER_PROMPT
        assert len(tracked.smoothed) == len(instances)
        # A read-only match of the same frame names live tracks only, each once.
        matched = [int(i) for i in tracker.match(instances, stamp, version) if i]
        assert len(matched) == len(set(matched)) and set(matched) <= set(ids)


def test_fuzzed_depth_and_object_settings_leave_the_node_answering(ros_context, tiny_model_dir):
    """
    With use_depth on: odd depth images (none valid, NaN, inf, huge jumps, noise, another
    size) paired with every frame, random live object settings and thresholds from an empty
    mask to a full one, prompt changes and ~/segment calls. Every frame is answered with
    well-formed instances and the node counts no failure.
    """
    from clipseg_ros_interfaces.srv import Segment
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    rng = np.random.default_rng(SEED + 7)
    harness = RunningNode(ros_context, tiny_model_dir, use_depth=True, min_instance_pixels=1,
                          track_min_frames=1, max_instances_per_prompt=255)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    depth_pub = harness.client_node.create_publisher(Image, 'depth', qos)
    info_pub = harness.client_node.create_publisher(CameraInfo, 'camera_info', qos)
    try:
        camera, node = harness.camera, harness.node
        assert camera.wait_for_subscriber()
        settings = {'threshold': lambda: float(rng.choice([0.0, 0.3, 0.5, 0.52, 1.0])),
                    'min_instance_pixels': lambda: int(rng.choice([1, 3, 50])),
                    'max_instances_per_prompt': lambda: int(rng.choice([1, 4, 255])),
                    'instance_depth_gap': lambda: float(rng.choice([0.0, 0.01, 10.0])),
                    'tracking': lambda: bool(rng.random() < 0.8),
                    'track_max_missed_frames': lambda: int(rng.choice([0, 3, 1000])),
                    'track_min_frames': lambda: int(rng.choice([1, 2])),
                    'track_gate': lambda: float(rng.choice([0.001, 0.1, 10.0])),
                    'track_reid_seconds': lambda: float(rng.choice([0.0, 10.0, 3600.0]))}
        seen = tracked = finite = 0
        for index in range(36):
            name = list(settings)[index % len(settings)]
            assert harness.set_parameter(name, settings[name]()).successful, name
            if index % 9 == 4:
                prompts = ['mug', 'floor', 'a person', 'sky'][:int(rng.integers(1, 5))]
                assert harness.call('text', fuzz.SetTextPrompts.Request(prompts=prompts)).success
            width, height = (int(n) for n in rng.integers(8, 72, 2))
            stamp = camera.node.get_clock().now().to_msg()
            depth_width = width if rng.random() < 0.85 else width + 1
            depth = fuzz.odd_depth_image(rng, depth_width, height)
            info = CameraInfo(width=depth_width, height=height)
            info.k = [float(rng.uniform(10, 500)), 0.0, width / 2, 0.0,
                      float(rng.uniform(10, 500)), height / 2, 0.0, 0.0, 1.0]
            depth.header.stamp = info.header.stamp = stamp
            depth.header.frame_id = info.header.frame_id = 'camera_optical'
            received = node.camera().depth.pairing.counters.depth_received
            # Sent again until it is in: a sample can be lost while qos_reliability auto swaps
            # the node's depth subscription after the publisher appears.
            for _ in range(5):
                info_pub.publish(info)
                depth_pub.publish(depth)
                if camera.wait_for(
                        lambda: node.camera().depth.pairing.counters.depth_received > received,
                        2):
                    break
            assert node.camera().depth.pairing.counters.depth_received > received
            key = camera.publish(encode_frame(rgb_frame(width, height, index), 'rgb8'),
                                 stamp=stamp)
            outputs = camera.wait_outputs(key, names=('mask', 'segmentation'))
            assert outputs is not None, f'frame {index} not answered'
            segmentation = outputs['segmentation']
            mask = image_to_array(outputs['mask'])
            entries = segmentation.instances
            current = [e for e in entries if e.seen_this_frame]
            assert entries[:len(current)] == current, 'seen instances come first'
            for entry in current:
                assert entry.label == segmentation.labels[entry.prompt_index]
                assert 0 < entry.pixel_count <= (mask == entry.prompt_index + 1).sum()
                assert entry.depth_pixel_count <= entry.pixel_count
            ids = [e.track_id for e in entries if e.track_id]
            assert len(ids) == len(set(ids)), 'a track id twice in one message'
            seen += len(current)
            tracked += sum(1 for e in current if e.track_id)
            finite += sum(1 for e in current if np.isfinite(e.centroid_3d.z))
            if index % 6 == 5:
                response = harness.call('segment', Segment.Request())
                assert response.success, response.message
                answer = response.segmentation
                assert all(e.label == answer.labels[e.prompt_index] for e in answer.instances)
        print(f'{seen} instances over 36 frames, {tracked} with a track id, {finite} with a 3D '
              'centroid')
        assert seen > 0 and tracked > 0 and finite > 0, 'the objects path was not exercised'
        counters = node.counters
        assert counters.failed == 0, counters.last_error
    finally:
        harness.close()


def test_late_missing_and_out_of_order_depth_leave_every_frame_answered(ros_context,
                                                                        tiny_model_dir):
    """
    Seeded depth timing per frame (before it, 0-60 ms after it, missing, after a later-stamped
    depth image, after an old one) under a changing depth_wait (0, 0.05 or 1 s): every frame is
    answered; one that has depth has its own; depth sent before its frame always pairs, a
    missing one never does, and with the 1 s wait a frame gets depth that follows it, except
    right after a time-out (frames then go at once until depth resumes).
    """
    from builtin_interfaces.msg import Time
    from clipseg_ros.tools.depth_stream import DepthFeed
    from clipseg_ros.tools.scenes import render_scene
    import time
    rng = np.random.default_rng(SEED + 26)
    harness = RunningNode(ros_context, tiny_model_dir, use_depth=True, threshold=0.0)
    scene = render_scene(2, 64, 48)
    feed = DepthFeed(harness.client_node, 'depth', 'camera_info', scene.depth_mm(),
                     scene.intrinsics)
    frame = encode_frame(scene.rgb, 'rgb8')
    base = harness.client_node.get_clock().now().nanoseconds

    def at(stamp_ns):
        return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)

    try:
        camera, node = harness.camera, harness.node
        assert camera.wait_for_subscriber() and feed.wait_for_subscribers(10.0)
        pairing, counters = node.camera().depth.pairing, node.counters
        stalled, outcomes = False, {}
        for index in range(60):
            if index % 10 == 0:
                wait = float(rng.choice([0.0, 0.05, 1.0]))
                assert harness.set_parameter('depth_wait', wait).successful
            kind, delay = fuzz.depth_timing(rng)
            stamp = base + index * 100_000_000  # 100 ms apart: no other frame's depth is near
            depth_before = pairing.counters.depth_received
            if kind == 'before':
                feed.publish(at(stamp))
            elif kind == 'stale':
                feed.publish(at(stamp - 1_000_000_000))
            key = camera.publish(frame, stamp=at(stamp))
            if kind == 'reordered':
                feed.publish(at(stamp + 50_000_000))
            if kind in ('after', 'reordered', 'stale'):
                time.sleep(delay)
                feed.publish(at(stamp))
            outputs = camera.wait_outputs(key, names=('segmentation',), timeout=15.0)
            assert outputs is not None, f'frame {index} ({kind}) not answered'
            segmentation = outputs['segmentation']
            if segmentation.has_depth:
                assert (segmentation.depth_stamp.sec, segmentation.depth_stamp.nanosec) == key
            # Published first, the depth image may still be taken after the frame (another
            # topic): only a wait guarantees the pairing.
            if kind == 'before' and wait > 0.0 and not stalled:
                assert segmentation.has_depth, f'frame {index}: its depth came first'
            if kind == 'missing':
                assert not segmentation.has_depth
            if kind in ('after', 'stale') and wait == 1.0 and not stalled:
                assert segmentation.has_depth, f'frame {index} ({kind}, {delay * 1e3:.0f} ms)'
            outcomes.setdefault(kind, []).append(segmentation.has_depth)
            # Every depth image sent in this step is in before the next frame. The last one sent
            # is the frame's own; the one before it may be overwritten in the subscription's
            # one-message queue when the executor is late by more than the delay between them.
            sent = {'before': 1, 'after': 1, 'missing': 0, 'reordered': 2, 'stale': 2}[kind]
            if sent:
                assert camera.wait_for(lambda: pairing.has_depth_for(stamp, 0.0), 10)
            assert min(sent, 1) <= pairing.counters.depth_received - depth_before <= sent
            # The node's own word: depth that came later than the wait leaves it stalled.
            stalled = node.camera().depth.stall.active
        print({kind: f'{sum(got)} of {len(got)} with depth' for kind, got in outcomes.items()})
        assert set(outcomes) == set(fuzz.DEPTH_TIMINGS)
        assert counters.failed == 0, counters.last_error
        # The last frame's outputs can arrive before the worker counts it as processed.
        camera.wait_for(lambda: counters.processed == 60, 10)
        assert counters.processed == 60 and counters.dropped == 0
    finally:
        harness.close()
