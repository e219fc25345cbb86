"""The 3D step's cost beside the engine's, frame by frame, on a synthetic tabletop scene.

For each prompt count: ClipSegEngine.segment on a 640x480 scene (the full-size CLIPSeg
architecture with random weights unless --model is given), then the node's 3D step on its
labels and the scene's aligned 16UC1 depth (depth to metres, per-prompt centroid and extent,
the decimated point cloud), alternately, so both see the same machine state. Prints the p50 of
each and the 3D step's share of the engine's time. No ROS needed.

    python bench/depth_bench.py                 # CPU: N = 1 and 4
    python bench/depth_bench.py --device cuda
"""

import argparse
import json
import time

from clipseg_ros.core.depth_targets import (
    CameraModel, depth_in_metres, labelled_points, prompt_targets)
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import numpy as np


def three_d_step(labels, depth_mm, camera, prompt_count) -> None:
    """What the node does for one frame with depth and a subscribed point cloud."""
    metres = depth_in_metres(depth_mm, '16UC1', max_depth=10.0)
    prompt_targets(labels, metres, camera, prompt_count, erosion_px=2)
    labelled_points(labels, metres, camera, decimation=4)


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
        engine_s, step_s = [], []
        for _ in range(args.frames):
            start = time.perf_counter()
            labels = engine.segment(scene.rgb, prompts, threshold=0.0).labels
            engine_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            three_d_step(labels, depth_mm, camera, count)
            step_s.append(time.perf_counter() - start)
        engine_ms, step_ms = np.median(engine_s) * 1e3, np.median(step_s) * 1e3
        print(f'640x480, N={count}: engine p50 {engine_ms:.1f} ms, 3D step p50 {step_ms:.2f} ms '
              f'({100.0 * step_ms / engine_ms:.2f}% of the engine), {args.frames} frames')
        summary[count] = {'engine_ms': engine_ms, 'depth_step_ms': step_ms}
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
