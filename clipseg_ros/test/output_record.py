"""
Every message the node publishes for a fixed set of frames, prompts and depth, as hashes of
their fields: the reference that keeps speed work from changing any output.

Each case runs a short sequence of frames through what the worker runs after a frame is
converted: the engine's segment_batch (tiny model; its network's probabilities replaced by
seeded maps, so the reference does not hang on the back end's arithmetic) or a segmentation
result made from a rendered scene's true masks (clean regions) or from specks, the 3D targets
of the paired depth, the camera's objects (instances and tracks) and
``ResultPublishers.publish`` with every output subscribed. The publishers are created on a
recording stand-in for the lifecycle node, which keeps each message's fields as bytes (every
field, in order, with its name; the CDR bytes rclpy sends hold uninitialised alignment padding,
so they are not hashed). ``inference_time`` is zeroed (a wall-clock time).

    python clipseg_ros/test/output_record.py   # rewrites data/output_hashes.json
"""

import array
import dataclasses
import hashlib
import json
import struct
from pathlib import Path
import sys
import tempfile

from clipseg_ros.core.depth_targets import CameraModel, prompt_targets
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.region_stats import region_stats
from clipseg_ros.core.results import SegmentationResult
from clipseg_ros.depth_input import PairedTargets
from clipseg_ros.objects import CameraObjects
from clipseg_ros.parameters import default_value
from clipseg_ros.publishers import PromptSet, ResultPublishers
from clipseg_ros.tools.drive import synthetic_frame
from clipseg_ros.tools.stand_in_maps import SeededNetwork
from clipseg_ros.tools.scene_sequences import moving_objects, several_of_a_kind, touching_pair
from clipseg_ros.tools.tiny_model import write_tiny_model
import cv2
import numpy as np
from std_msgs.msg import Header
import torch

HASHES_PATH = Path(__file__).parent / 'data' / 'output_hashes.json'
ALL_TOPICS = ('mask', 'confidence', 'overlay', 'segmentation', 'instances', 'points', 'markers')


def field_bytes(value) -> bytes:
    """Every field of a message, recursively, as bytes that differ when any value does."""
    if hasattr(value, 'get_fields_and_field_types'):
        return b'{' + b''.join(name.encode() + b'=' + field_bytes(getattr(value, name)) + b';'
                               for name in value.get_fields_and_field_types()) + b'}'
    if isinstance(value, array.array):
        return b'a' + value.typecode.encode() + b'%d:' % len(value) + value.tobytes()
    if isinstance(value, np.ndarray):
        return b'n' + value.dtype.str.encode() + b'%d:' % value.size + value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        return b'b%d:' % len(value) + bytes(value)
    if isinstance(value, (list, tuple)):
        return b'[' + b','.join(field_bytes(item) for item in value) + b']'
    if isinstance(value, float):
        return b'f' + struct.pack('<d', value)
    return repr(value).encode()


class _RecordingPublisher:
    def __init__(self, topic: str, sink: dict) -> None:
        self._topic, self._sink = topic, sink

    def get_subscription_count(self) -> int:
        return 1  # every output subscribed

    def publish(self, msg) -> None:
        self._sink.setdefault(self._topic, []).append(field_bytes(msg))


class RecordingNode:
    """What ResultPublishers needs of a lifecycle node; keeps every message's bytes."""

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = {}

    def create_lifecycle_publisher(self, message_type, topic, qos):
        return _RecordingPublisher(topic, self.messages)

    def destroy_lifecycle_publisher(self, publisher) -> None:
        pass


def _parameter(overrides: dict):
    return lambda name: overrides[name] if name in overrides else default_value(name)


def _header(index: int) -> Header:
    header = Header(frame_id='camera_optical')
    header.stamp.sec, header.stamp.nanosec = 100 + index // 30, (index % 30) * 33_333_333
    return header


def _truth_result(scene, prompt_kinds) -> SegmentationResult:
    """A clean result: each prompt's true mask, a smooth confidence peaking inside objects."""
    labels = np.zeros(scene.depth_m.shape, np.uint8)
    for index, kind in enumerate(prompt_kinds):
        labels[scene.mask_of(*kind) & (labels == 0)] = index + 1
    inside = cv2.GaussianBlur((labels > 0).astype(np.float32), (0, 0), 3.0)
    confidence = (0.2 + 0.75 * inside).astype(np.float32)
    max_confidence = np.array([confidence[labels == k + 1].max(initial=0.0)
                               for k in range(len(prompt_kinds))], np.float32)
    return SegmentationResult(labels, confidence, max_confidence,
                              region_stats(labels, confidence, len(prompt_kinds)), None, 0.0)


def _paired(result: SegmentationResult, scene, index: int,
            prompt_count: int) -> PairedTargets | None:
    if scene is None:
        return None
    depth_m, intrinsics = scene.depth_m, scene.intrinsics
    height, width = depth_m.shape
    camera = CameraModel(width, height, float(intrinsics.fx), float(intrinsics.fy),
                         float(intrinsics.cx), float(intrinsics.cy))
    metres = np.where(depth_m > 0, depth_m, np.nan).astype(np.float32)
    stamp = 100_000_000_000 + index * 33_333_333
    return PairedTargets(prompt_targets(result.labels, metres, camera, prompt_count, 2),
                         stamp, depth_m=metres, camera=camera)


def _specks_result(seed: int, prompt_count: int, height: int = 480,
                   width: int = 640) -> SegmentationResult:
    """About 5,000 isolated specks of 1-4 pixels and a few large blobs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    rows, columns = rng.integers(0, height - 2, 5000), rng.integers(0, width - 2, 5000)
    for dv, du in ((0, 0), (0, 1), (1, 0)):
        keep = rng.random(5000) < (1.0 if dv == du == 0 else 0.4)
        labels[rows[keep] + dv, columns[keep] + du] = rng.integers(1, prompt_count + 1,
                                                                   int(keep.sum()))
    for _ in range(3):
        v, u = rng.integers(40, height - 40), rng.integers(40, width - 40)
        labels[v - 30:v + 30, u - 25:u + 25] = rng.integers(1, prompt_count + 1)
    confidence = rng.random((height, width), np.float32)
    max_confidence = np.array([confidence[labels == k + 1].max(initial=0.0)
                               for k in range(prompt_count)], np.float32)
    return SegmentationResult(labels, confidence, max_confidence,
                              region_stats(labels, confidence, prompt_count), None, 0.0)


def _cases():
    """
    (name, prompts, threshold, blur, [(rgb, scene or None, depth paired, kind)]); kind: 'model',
    'specks' or the truth's (shape, colour) per prompt.
    """
    moving = [f.scene for f in moving_objects(3, frames=4)]
    several = [several_of_a_kind(s).scene for s in (1, 2)]
    touching = [touching_pair(s).scene for s in (4, 5)]
    kinds = [('circle', 'red'), ('square', 'green')]
    yield ('model_no_depth', ['a red ball', 'sky'], 0.3, 3.0,
           [(synthetic_frame(640, 480, i), None, False, 'model') for i in range(3)])
    # Ragged regions with holes and fragments, and many small blobs.
    yield ('model_ragged_depth', ['a red circle', 'a green square', 'table'], 0.3, 1.0,
           [(scene.rgb, scene, True, 'model') for scene in moving])
    yield ('model_covering_depth', ['a red circle'], 0.0, 2.0,
           [(scene.rgb, scene, True, 'model') for scene in several])
    yield ('specks_depth', ['a red circle', 'a green square'], 0.3, 0.0,
           [(scene.rgb, scene, True, 'specks') for scene in several])
    yield ('truth_depth', ['a red circle', 'a green square'], 0.3, 0.0,
           [(scene.rgb, scene, True, kinds) for scene in several + touching + moving])
    yield ('truth_no_depth', ['a red circle', 'a green square'], 0.3, 0.0,
           [(scene.rgb, scene, False, kinds) for scene in moving])


def record(model_dir: Path) -> dict[str, str]:
    """'case/frame/topic' -> sha256 of the serialised message, for every case."""
    torch.set_num_threads(1)
    engine = ClipSegEngine(model=str(model_dir), device='cpu', resolution=64, backend='torch')
    network = SeededNetwork()
    engine._network.probabilities = network.probabilities
    hashes = {}
    try:
        for case, (name, texts, threshold, blur, frames) in enumerate(_cases()):
            prompt_set = PromptSet(tuple(engine.text_prompts(texts)), 1)
            objects = CameraObjects(_parameter({}))
            node = RecordingNode()
            publishers = ResultPublishers(node, with_depth=True)
            for index, (rgb, scene, with_depth, kind) in enumerate(frames):
                network.seed, network.blur = 1000 * case + index, blur
                if kind == 'model':
                    result, = engine.segment_batch([rgb], prompt_set.prompts, threshold)
                elif kind == 'specks':
                    result = _specks_result(network.seed, len(texts))
                else:
                    result = _truth_result(scene, kind)
                result = dataclasses.replace(result, inference_seconds=0.0)
                header = _header(index)
                paired = _paired(result, scene if with_depth else None, index, len(texts))
                node.messages.clear()
                publishers.publish(header, rgb, result, prompt_set, threshold, True, paired,
                                   1, objects.update(header, result, paired, prompt_set))
                for topic, messages in sorted(node.messages.items()):
                    for count, data in enumerate(messages):
                        hashes[f'{name}/{index}/{topic}/{count}'] = \
                            hashlib.sha256(data).hexdigest()
    finally:
        engine.release()
    return hashes


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        hashes = record(write_tiny_model(Path(scratch) / 'model', seed=0))
    HASHES_PATH.parent.mkdir(exist_ok=True)
    HASHES_PATH.write_text(json.dumps(hashes, indent=0, sort_keys=True) + '\n')
    print(f'{len(hashes)} messages recorded in {HASHES_PATH}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
