"""The refinement's own cost per frame, beside the bilinear frame maps it replaces.

From one network output per frame it alternates, frame by frame on the same machine state: the
frame maps the engine makes with ``refine none`` (bilinear resize, best prompt, threshold) and
with the default ``guided`` refinement (building the filter included), and the overlay. Frames
are the miniature model's tabletop scenes, so the maps have real borders to refine; 13 prompts
name the scene's objects first, then other kinds. Wall p50 and CPU p50 per step; the refinement
is checked to have run (cells filtered pixel by pixel, maps changed).

    python bench/refine_bench.py [--size 640x480] [--prompts 1,13] [--frames 20] [--device cuda]
    python bench/refine_bench.py --checkpoint-cells   # cells sized as for the 352 px checkpoint

``RefineStep`` is also used by node_bench.py to print the step beside the engine.
"""

import argparse
import json
from pathlib import Path
import sys
import time

import numpy as np
import torch

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.options import set_cpu_threads
from clipseg_ros.core.overlay import render_overlay
from clipseg_ros.core.refine import GuidedRefinement, patch_footprint, RefineSettings
from clipseg_ros.core.results import frame_maps_to_host, host_result
from clipseg_ros.tools.scenes import all_kinds, phrase, render_scene

THRESHOLD = 0.3  # the node's default
# CIDAS/clipseg-rd64-refined's input side and patch size (CLIP ViT-B/16).
CHECKPOINT_RESOLUTION, CHECKPOINT_PATCH = 352, 16
MINI_MODEL = Path(__file__).resolve().parents[1] / 'clipseg_ros' / 'models' / \
    'clipseg_shapes_mini'


class RefineStep:
    """Frame maps of one network output, bilinear and refined, timed side by side."""

    def __init__(self, engine: ClipSegEngine, image_rgb: np.ndarray, prompts,
                 settings: RefineSettings = RefineSettings()) -> None:
        self.engine, self.image, self.settings = engine, image_rgb, settings
        self.count = len(prompts)
        with torch.inference_mode():
            pixels = engine.preprocess(image_rgb)
            embeddings = torch.stack([p.embedding for p in prompts]).to(pixels.device)
            # The engine's network output, as segment() makes it (a benchmark may look inside).
            self.maps = engine._network.probabilities(pixels, embeddings)[0]
        height, width = image_rgb.shape[:2]
        self.footprint = patch_footprint(height, width, engine.resolution,
                                         engine._network.patch_size)
        self.active_fraction = 0.0
        self.cell_px = 0
        self.changed = False

    def bilinear(self) -> dict:
        height, width = self.image.shape[:2]
        with torch.inference_mode():
            return frame_maps_to_host(self.maps, height, width, THRESHOLD, self.count, False,
                                      self.engine.device)

    def refined(self) -> dict:
        height, width = self.image.shape[:2]
        with torch.inference_mode():
            refinement = GuidedRefinement(
                self.maps, torch.from_numpy(self.image).to(self.engine.device), None,
                self.settings, self.footprint, every_prompt=False, threshold=THRESHOLD)
            host = frame_maps_to_host(self.maps, height, width, THRESHOLD, self.count, False,
                                      self.engine.device, refinement)
        self.active_fraction = refinement.active_cells / refinement.active.size
        self.cell_px = refinement.size
        return host

    def run(self) -> tuple[float, float, float, float]:
        """(bilinear wall, refined wall, bilinear CPU, refined CPU) seconds of one frame."""
        times = []
        for step in (self.bilinear, self.refined):
            wall, cpu = time.perf_counter(), time.process_time()
            result = step()
            times.append((time.perf_counter() - wall, time.process_time() - cpu, result))
        plain, refined = times[0][2], times[1][2]
        self.changed = bool(np.abs(plain['confidence'] - refined['confidence']).max() > 1e-3)
        return times[0][0], times[1][0], times[0][1], times[1][1]


def scene_prompts(scene, count: int) -> list[str]:
    texts = [phrase(obj) for obj in scene.objects]
    texts += [phrase(kind) for kind in all_kinds() if phrase(kind) not in texts]
    return texts[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--prompts', default='1,13')
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--checkpoint-cells', action='store_true',
                        help="filter on the cells the 352 px checkpoint's patch footprint gives "
                        "(16 px patches) instead of the miniature model's, on its maps")
    parser.add_argument('--device', default='cpu',
                        help='cpu or cuda: where the maps and the frame-size work are')
    args = parser.parse_args()
    set_cpu_threads(args.threads)  # torch's and OpenCV's, as the node's cpu_threads
    width, height = (int(v) for v in args.size.split('x'))
    engine = ClipSegEngine(str(MINI_MODEL), device=args.device, backend='torch', dtype='float32')
    scenes = [render_scene(seed, width, height) for seed in range(4)]
    rows = []
    for count in (int(n) for n in args.prompts.split(',')):
        steps = [RefineStep(engine, s.rgb, engine.text_prompts(scene_prompts(s, count)))
                 for s in scenes]
        if args.checkpoint_cells:
            for step in steps:
                step.footprint = patch_footprint(height, width, CHECKPOINT_RESOLUTION,
                                                 CHECKPOINT_PATCH)
        for step in steps:
            step.run()  # warm-up
        samples, active, overlay_s = [], [], []
        for index in range(args.frames):
            step = steps[index % len(steps)]
            samples.append(step.run())
            active.append(step.active_fraction)
            if not step.changed or step.active_fraction == 0.0:
                raise RuntimeError('the refinement did not run as printed')
            result = host_result(step.refined(), count, 0.0)
            start = time.perf_counter()
            render_overlay(step.image, result.labels, result.stats,
                           scene_prompts(scenes[index % len(steps)], count))
            overlay_s.append(time.perf_counter() - start)
        p50 = np.median(np.array(samples), axis=0) * 1e3
        row = {'width': width, 'height': height, 'prompts': count, 'frames': args.frames,
               'cell_px': steps[0].cell_px,
               'bilinear_p50_ms': round(p50[0], 2), 'refined_p50_ms': round(p50[1], 2),
               'refine_adds_p50_ms': round(p50[1] - p50[0], 2),
               'bilinear_cpu_p50_ms': round(p50[2], 2), 'refined_cpu_p50_ms': round(p50[3], 2),
               'ratio': round(p50[1] / p50[0], 2),
               'blocks_filtered_fraction': round(float(np.mean(active)), 3),
               'overlay_p50_ms': round(float(np.median(overlay_s)) * 1e3, 2)}
        rows.append(row)
        print(f'{width}x{height} N={count}, {row["cell_px"]} px cells: frame maps bilinear p50 '
              f'{row["bilinear_p50_ms"]:.1f} ms, refined {row["refined_p50_ms"]:.1f} ms '
              f'(x{row["ratio"]:.2f}, adds '
              f'{row["refine_adds_p50_ms"]:.1f} ms; CPU {row["bilinear_cpu_p50_ms"]:.1f} -> '
              f'{row["refined_cpu_p50_ms"]:.1f} ms); {100 * row["blocks_filtered_fraction"]:.0f}%'
              f' of (prompt, half-cell block) pairs filtered pixel by pixel; overlay p50 '
              f'{row["overlay_p50_ms"]:.1f} ms', flush=True)
    print(json.dumps({'benchmark': 'refine_bench', 'threads': args.threads,
                      'device': args.device, 'results': rows}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
