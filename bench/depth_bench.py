"""The 3D and objects steps' cost beside the engine's, frame by frame, on synthetic scenes.

For each prompt count: ClipSegEngine.segment on a 640x480 scene (the full-size CLIPSeg
architecture with random weights unless --model is given), then the node's 3D step on its
labels and the scene's aligned 16UC1 depth (depth to metres, per-prompt centroid and extent,
the decimated point cloud), then the node's objects step (instances with depth, then tracking;
see ObjectsStep), alternately, so all see the same machine state. Prints the p50 of each and
their share of the engine's time, wall and CPU; then the instances step's CPU on 5,000 specks
and on one region covering the frame. No ROS needed.

    python bench/depth_bench.py                 # CPU: N = 1 and 4
    python bench/depth_bench.py --device cuda
"""

import argparse
import json
import time

from clipseg_ros.core.appearance import colour_signatures
from clipseg_ros.core.depth_targets import (
    CameraModel, depth_in_metres, labelled_points, prompt_targets)
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.instances import find_instances, InstanceSettings
from clipseg_ros.core.region_stats import region_stats
from clipseg_ros.core.tracks import InstanceTracker
from clipseg_ros.tools.scene_sequences import render_layout, Solid
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.stand_in_maps import speck_labels
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import cv2
import numpy as np

# Prompt k of the objects step labels every object of this kind; three red circles, one each
# of the others.
OBJECT_KINDS = (('circle', 'red'), ('square', 'green'), ('triangle', 'blue'),
                ('star', 'yellow'))
OBJECT_LAYOUT = (Solid(0, 'circle', 'red', (0.25, 0.45)), Solid(1, 'circle', 'red', (0.72, 0.4)),
                 Solid(2, 'circle', 'red', (0.5, 0.75)),
                 Solid(3, 'square', 'green', (0.5, 0.2), size=0.04),
                 Solid(4, 'triangle', 'blue', (0.12, 0.8), size=0.04),
                 Solid(5, 'star', 'yellow', (0.85, 0.75), size=0.04))


class ObjectsStep:
    """
    What the node does per frame for objects: instances with depth, then their colour
    signatures and tracking, on a scene with known objects at about 1 m (OBJECT_LAYOUT).
    Prompt k labels every object of OBJECT_KINDS[k], as CLIPSeg labels every red circle 'red
    circle'; each object's mask is eroded or dilated by 0 to 2 px per frame, as CLIPSeg's masks
    flicker. Records what every
    frame found, so that :meth:`problem` can say whether it ran what is printed.
    """

    def __init__(self, prompt_count: int, width: int = 640, height: int = 480,
                 variants: int = 8) -> None:
        scene = render_layout(5, OBJECT_LAYOUT, width, height, distance=1.0).scene
        i = scene.intrinsics
        self.camera = CameraModel(i.width, i.height, i.fx, i.fy, i.cx, i.cy)
        self.depth_m = depth_in_metres(scene.depth_mm(), '16UC1', max_depth=10.0)
        self.rgb = scene.rgb
        self.prompt_count = prompt_count
        kinds = OBJECT_KINDS[:prompt_count]
        self.expected = sum(item.kind in kinds for item in scene.objects)
        rng = np.random.default_rng(0)
        self.maps = []
        for _ in range(variants):
            labels = np.zeros(self.depth_m.shape, np.uint8)
            for item in scene.objects:
                if item.kind in kinds:
                    radius = int(rng.integers(0, 3))
                    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
                    grow = cv2.dilate if rng.random() < 0.5 else cv2.erode
                    mask = grow(item.mask.view(np.uint8), kernel).view(bool)
                    labels[mask & (labels == 0)] = kinds.index(item.kind) + 1
            confidence = np.where(labels > 0, rng.uniform(0.5, 0.9, labels.shape),
                                  rng.uniform(0.0, 0.2, labels.shape)).astype(np.float32)
            # The engine computes the boxes anyway (SegmentationResult.stats): not timed.
            boxes = region_stats(labels, confidence, prompt_count).boxes
            self.maps.append((labels, confidence, boxes))
        self.tracker = InstanceTracker()
        self.found: list[int] = []
        self.track_ids: list[set[int]] = []

    def run(self) -> tuple[float, float]:
        """One frame's objects step: (wall seconds, CPU seconds of this thread)."""
        labels, confidence, boxes = self.maps[len(self.found) % len(self.maps)]
        start, start_cpu = time.perf_counter(), time.thread_time()
        instances = find_instances(labels, confidence, self.prompt_count, InstanceSettings(),
                                   self.depth_m, self.camera, boxes=boxes)
        signatures = colour_signatures(self.rgb, instances.image, len(instances))
        tracked = self.tracker.update(instances, len(self.found) / 15.0, prompt_version=1,
                                      signatures=signatures)
        seconds, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
        self.found.append(len(instances))
        self.track_ids.append(set(tracked.track_ids.tolist()))
        return seconds, cpu

    def problem(self) -> str | None:
        """Why the frames run did not measure what is printed, or None."""
        if not self.found or set(self.found) != {self.expected}:
            return f'expected {self.expected} instances a frame, found {self.found}'
        reported = self.track_ids[self.tracker.settings.min_frames - 1:]
        if not reported or any(0 in ids or len(ids) != self.expected for ids in reported):
            return f'instances without a track id: {self.track_ids}'
        if len(set().union(*reported)) != self.expected:
            return f'track ids switched: {self.track_ids}'
        return None


def worst_masks(camera: CameraModel, frames: int) -> dict:
    """
    The instances step's CPU (p50 ms) on two worst cases at 640x480, without and with depth:
    5,000 one-pixel specks (5,000 components, all dropped) and one region covering the frame.
    Fails (SystemExit) when a case did not find what it must: no instance, and one.
    """
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.3, 1.0, (480, 640)).astype(np.float32)
    depth = np.full((480, 640), 1.0, np.float32)
    cases = {'specks': (speck_labels(5000, 480, 640), 0),
             'covering': (np.ones((480, 640), np.uint8), 1)}
    timings = {}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # a thread's CPU time is all the work: OpenCV's team would hide some
    try:
        for name, (labels, expected) in cases.items():
            timings.update(_worst_case(name, labels, expected, confidence, depth, camera,
                                       frames))
    finally:
        cv2.setNumThreads(threads)
    return timings


def _worst_case(name: str, labels: np.ndarray, expected: int, confidence: np.ndarray,
                depth: np.ndarray, camera: CameraModel, frames: int) -> dict:
    """One mask's p50 CPU, without and with depth; SystemExit unless it finds ``expected``."""
    timings = {}
    # The engine computes the boxes anyway (SegmentationResult.stats): not timed.
    boxes = region_stats(labels, confidence, 1).boxes
    for with_depth in (False, True):
        seconds = []
        for _ in range(frames + 1):  # the first warms up
            start = time.thread_time()
            found = find_instances(labels, confidence, 1, InstanceSettings(),
                                   depth if with_depth else None,
                                   camera if with_depth else None, boxes=boxes)
            seconds.append(time.thread_time() - start)
            if len(found) != expected:
                raise SystemExit(f'instances on {name}: {len(found)}, expected {expected}')
        timings[f"{name}{'_depth' if with_depth else ''}_ms"] = \
            float(np.median(seconds[1:])) * 1e3
    return timings


def three_d_step(labels, depth_mm, camera, prompt_count) -> tuple[int, int]:
    """
    What the node does for one frame with depth and a subscribed point cloud.

    Returns the valid pixels behind the targets and the points made, for the check that it
    had work to do.
    """
    metres = depth_in_metres(depth_mm, '16UC1', max_depth=10.0)
    targets = prompt_targets(labels, metres, camera, prompt_count, erosion_px=2)
    points, _ = labelled_points(labels, metres, camera, decimation=4)
    return int(targets.valid_pixels.sum()), len(points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prompts', default='1,4')
    parser.add_argument('--frames', type=int, default=7)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--model', help='model folder or hub id (default: full-size random)')
    args = parser.parse_args()
    if args.model:
        engine = ClipSegEngine(args.model, device=args.device)
    else:
        model, tokenizer = build_random_model('full')
        engine = ClipSegEngine.from_model(model, tokenizer, PREPROCESSOR_CONFIG,
                                          device=args.device)
    scene = render_scene(11, 640, 480)
    i = scene.intrinsics
    camera = CameraModel(i.width, i.height, i.fx, i.fy, i.cx, i.cy)
    depth_mm = scene.depth_mm()
    summary = {}
    for count in (int(n) for n in args.prompts.split(',')):
        prompts = engine.text_prompts([f'object {k}' for k in range(count)])
        # threshold 0: every pixel labelled, the most work the 3D step can get
        engine.segment(scene.rgb, prompts, threshold=0.0)
        objects = ObjectsStep(count)
        # Warm-up, checked with the rest: enough frames for the tracks to be reported, so that
        # even one timed frame measures a tracker that confirms and continues tracks.
        for _ in range(objects.tracker.settings.min_frames):
            objects.run()
        engine_s, engine_cpu_s, step_s, objects_s, objects_cpu_s = [], [], [], [], []
        for _ in range(args.frames):
            start, start_cpu = time.perf_counter(), time.process_time()
            labels = engine.segment(scene.rgb, prompts, threshold=0.0).labels
            engine_s.append(time.perf_counter() - start)
            engine_cpu_s.append(time.process_time() - start_cpu)
            start = time.perf_counter()
            made = three_d_step(labels, depth_mm, camera, count)
            step_s.append(time.perf_counter() - start)
            if not labels.all() or not all(made):  # threshold 0 labels every pixel
                print(f'3D step did not run as printed: {(labels > 0).mean():.0%} of the pixels '
                      f'labelled, (valid target pixels, points) {made}')
                return 1
            seconds, cpu = objects.run()
            objects_s.append(seconds)
            objects_cpu_s.append(cpu)
        if objects.problem():
            print(f'objects step did not run as printed: {objects.problem()}')
            return 1
        engine_ms, step_ms = np.median(engine_s) * 1e3, np.median(step_s) * 1e3
        engine_cpu_ms = np.median(engine_cpu_s) * 1e3
        objects_ms, objects_cpu_ms = np.median(objects_s) * 1e3, np.median(objects_cpu_s) * 1e3
        print(f'640x480, N={count}: engine p50 {engine_ms:.1f} ms ({engine_cpu_ms:.0f} ms CPU), '
              f'3D step p50 {step_ms:.2f} ms ({100.0 * step_ms / engine_ms:.2f}% of the engine), '
              f'objects step (instances + tracking, {objects.expected} objects, with depth) '
              f'p50 {objects_ms:.2f} ms ({100.0 * objects_ms / engine_ms:.2f}%), CPU '
              f'{objects_cpu_ms:.2f} ms ({100.0 * objects_cpu_ms / engine_cpu_ms:.2f}% of the '
              f"engine's CPU time), {args.frames} frames")
        summary[count] = {'engine_ms': engine_ms, 'engine_cpu_ms': engine_cpu_ms,
                          'depth_step_ms': step_ms, 'objects_step_ms': objects_ms,
                          'objects_step_cpu_ms': objects_cpu_ms,
                          'objects_per_frame': objects.expected}
    worst = worst_masks(camera, max(args.frames, 9))
    print('instances at 640x480, CPU p50: 5,000 one-pixel specks {specks_ms:.2f} ms (with depth '
          '{specks_depth_ms:.2f} ms), one region covering the frame {covering_ms:.2f} ms (with '
          'depth {covering_depth_ms:.2f} ms)'.format(**worst))
    summary['worst_masks'] = worst
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
