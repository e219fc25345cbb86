"""
Trackers run over the frames of a tracking scenario, each fed the same instances: the node's
(core/tracks.py with the colour signatures, as objects.py feeds it) and, for reference,
ByteTrack and OC-SORT from the ``trackers`` package (one tracker per prompt, given each
instance's box and score). Their per-frame output as boxes with ids, for tools/mot_scoring.py.
"""

from collections.abc import Callable
from dataclasses import dataclass

from clipseg_ros.core.appearance import colour_signatures
from clipseg_ros.core.depth_targets import CameraModel
from clipseg_ros.core.instances import find_instances, Instances, InstanceSettings
from clipseg_ros.core.tracks import InstanceTracker, TrackedObjects, TrackerSettings
from clipseg_ros.tools.mot_scoring import FrameBoxes
from clipseg_ros.tools.tracking_scenarios import KINDS, Observation, Scenario
import numpy as np

INSTANCE_SETTINGS = InstanceSettings(min_pixels=30)
FRAME_RATE = 15.0


@dataclass
class Detected:
    """One observation's instances and their colour signatures."""

    observation: Observation
    instances: Instances
    signatures: np.ndarray


def camera_model(scenario: Scenario) -> CameraModel:
    intrinsics = scenario.frames[0].scene.intrinsics
    return CameraModel(intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.fy,
                       intrinsics.cx, intrinsics.cy)


def detect(observations: list[Observation], camera: CameraModel) -> list[Detected]:
    """The instances of each frame (find_instances, with depth) and their signatures."""
    detected = []
    for seen in observations:
        instances = find_instances(seen.labels, seen.confidence, len(KINDS), INSTANCE_SETTINGS,
                                   seen.depth_m, camera)
        detected.append(Detected(seen, instances,
                                 colour_signatures(seen.rgb, instances.image, len(instances))))
    return detected


def truth(detected: list[Detected]) -> list[FrameBoxes]:
    """The ground truth of the frames."""
    return [FrameBoxes(d.observation.truth_ids, d.observation.truth_boxes) for d in detected]


def node_output(instances: Instances, tracked: TrackedObjects) -> FrameBoxes:
    """
    What the node reports as identities in a frame: the tracked instances, and the tracks
    held in a merged instance at their held box (Instance.held).
    """
    ids, boxes = [], []
    for k in np.flatnonzero(tracked.track_ids):
        ids.append(int(tracked.track_ids[k]))
        boxes.append(instances.boxes[k])
    for track in tracked.coasting:
        if track.held:
            ids.append(track.track_id)
            boxes.append(track.box)
    return FrameBoxes(ids, np.array(boxes, np.float64).reshape(-1, 4))


def run_node_tracker(detected: list[Detected], settings: TrackerSettings = TrackerSettings(),
                     with_signatures: bool = True,
                     each: Callable[[Detected, TrackedObjects], None] | None = None
                     ) -> list[FrameBoxes]:
    """The node's tracker over the frames; ``each(frame, tracked)`` sees every frame."""
    tracker = InstanceTracker(settings)
    output = []
    for frame in detected:
        tracked = tracker.update(frame.instances, frame.observation.stamp, 1,
                                 frame.signatures if with_signatures else None)
        if each is not None:
            each(frame, tracked)
        output.append(node_output(frame.instances, tracked))
    return output


def reference_trackers(min_frames: int = TrackerSettings().min_frames
                       ) -> dict[str, Callable[[], object]]:
    """
    Makers of the reference trackers, by name: their defaults at our frame rate, except that a
    track is confirmed after ``min_frames`` frames as the node's (ByteTrack's default is 2,
    OC-SORT's 3), so that no tracker loses or gains the first frames of every object.
    """
    from trackers import ByteTrackTracker, OCSORTTracker
    return {'ByteTrack': lambda: ByteTrackTracker(frame_rate=FRAME_RATE,
                                                  minimum_consecutive_frames=min_frames),
            'OC-SORT': lambda: OCSORTTracker(frame_rate=FRAME_RATE,
                                             minimum_consecutive_frames=min_frames)}


def run_reference(make: Callable[[], object], detected: list[Detected]) -> list[FrameBoxes]:
    """A reference tracker over the frames, one per prompt, on the instances' boxes and scores."""
    import supervision
    trackers = [make() for _ in KINDS]
    output = []
    for frame in detected:
        instances = frame.instances
        ids, boxes = [], []
        for prompt, tracker in enumerate(trackers):
            rows = np.flatnonzero(instances.prompt_index == prompt)
            xywh = instances.boxes[rows].astype(np.float64)
            detections = supervision.Detections(
                xyxy=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
                .reshape(-1, 4), confidence=instances.score[rows].astype(np.float64),
                class_id=np.full(len(rows), prompt, int))
            result = tracker.update(detections, timestamp=frame.observation.stamp)
            for xyxy, track_id in zip(result.xyxy, result.tracker_id):
                if track_id >= 0:  # -1: not a confirmed track
                    ids.append(int(track_id) * len(KINDS) + prompt)
                    boxes.append(np.concatenate([xyxy[:2], xyxy[2:] - xyxy[:2]]))
        output.append(FrameBoxes(ids, np.array(boxes, np.float64).reshape(-1, 4)))
    return output
