#!/usr/bin/env python3
"""
Which source finds the object under a click best? On synthetic scenes with exact masks, a click
at every object's middle pixel goes through each colour method (flood fill, watershed, GrabCut)
and the depth surface; prints the mean IoU with the object, the share of clicks refused and the
time per click (side by side, one run), and how clicks on the table are answered.

    python scripts/teach_regions_bench.py --scenes 30
"""

import argparse
import time

from clipseg_ros.core.teach_region import (
    check_plausible, COLOUR_METHODS, depth_surface, middle_pixel, RegionLimits, RegionRefused,
    TEACH_DEPTH_GAP)
from clipseg_ros.tools.scenes import render_scene
import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def table_pixel(scene, rng) -> tuple[int, int] | None:
    """A pixel of the table at least 20 px from every object."""
    import cv2
    objects = scene.label_image() > 0
    far = cv2.distanceTransform((~objects).astype(np.uint8), cv2.DIST_L2, 5) > 20
    far &= scene.depth_m > 0
    rows, columns = np.nonzero(far)
    if len(rows) == 0:
        return None
    pick = rng.integers(len(rows))
    return int(columns[pick]), int(rows[pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scenes', type=int, default=30)
    parser.add_argument('--first-seed', type=int, default=1000)
    args = parser.parse_args()
    limits = RegionLimits()
    methods = dict(COLOUR_METHODS)
    methods['depth_surface'] = None
    ious = {name: [] for name in methods}
    refused = {name: 0 for name in methods}
    seconds = {name: 0.0 for name in methods}
    table = {name: {'refused': 0, 'accepted': 0} for name in methods}
    clicks = 0
    rng = np.random.default_rng(0)
    for seed in range(args.first_seed, args.first_seed + args.scenes):
        scene = render_scene(seed, 640, 480)
        targets = [(obj.mask, middle_pixel(obj.mask)) for obj in scene.objects
                   if obj.mask.sum() >= limits.min_pixels]
        on_table = table_pixel(scene, rng)
        for name, method in methods.items():
            def find(column, row):
                if method is None:
                    mask = depth_surface(scene.depth_m, column, row, TEACH_DEPTH_GAP)
                    if mask is None:
                        raise RegionRefused('no depth')
                else:
                    mask = method(scene.rgb, column, row)
                check_plausible(mask, name, limits)
                return mask
            for truth, (column, row) in targets:
                start = time.perf_counter()
                try:
                    mask = find(column, row)
                except RegionRefused:
                    refused[name] += 1
                    ious[name].append(0.0)
                else:
                    ious[name].append(iou(mask, truth))
                seconds[name] += time.perf_counter() - start
            if on_table is not None:
                try:
                    find(*on_table)
                    table[name]['accepted'] += 1
                except RegionRefused:
                    table[name]['refused'] += 1
        clicks += len(targets)
    print(f'{args.scenes} scenes (seeds {args.first_seed}..), 640x480, {clicks} clicks at '
          'object middles; refused clicks count as IoU 0')
    print(f"{'source':<15}{'mean IoU':>9}{'median':>8}{'>=0.8':>7}{'refused':>9}"
          f"{'ms/click':>10}{'table clicks refused':>22}")
    for name in methods:
        values = np.array(ious[name])
        assert len(values) == clicks, (name, len(values), clicks)  # ran every click
        print(f'{name:<15}{values.mean():9.3f}{np.median(values):8.3f}'
              f'{(values >= 0.8).mean():7.0%}{refused[name]:9d}'
              f'{1000 * seconds[name] / max(clicks, 1):10.1f}'
              f"{table[name]['refused']:>14d} of "
              f"{table[name]['refused'] + table[name]['accepted']}")


if __name__ == '__main__':
    main()
