#!/usr/bin/env python3
"""
Score a miniature CLIPSeg model folder on held-out synthetic tabletop scenes.

The model is loaded through ``ClipSegEngine`` (the node's loading and inference path) at its own
input size, and run on frames of :mod:`clipseg_ros.tools.scenes` whose seeds the training
script never uses. For every object in a scene it measures the IoU of the predicted mask
(probability >= threshold, each prompt on its own) with the object's visible mask:

* text prompts, in every phrasing of :data:`clipseg_ros.tools.scenes.PHRASINGS`;
* support-image prompts: the same kind of object in another held-out scene, through
  ``ClipSegEngine.image_prompt`` with that object's mask;
* all canonical text prompts of a scene at once, scored on the label image (what the node
  publishes: each pixel goes to the most probable prompt above the threshold).

For prompts naming a kind absent from the scene (one sharing a shape or colour with an object
present, one at random) it counts how often the predicted mask is empty.

Every mask is scored twice or three times from the same network output: with the maps upsampled
bilinearly (``refine none``), with the default refinement (``guided``, the frame's colour as
the guide) and, with ``--depth-weight`` above 0, guided by colour and the scene's sensor depth.
Beside each mIoU it gives the boundary IoU: the IoU of the pixels within 3 pixels (a 7 x 7
square) of the predicted border and those within 3 pixels of the true border, on both sides of
each. With depth it gives the 3D extent error of each object of the label image: the mean
absolute difference, in millimetres, of its extent (5th and 95th percentiles per axis of the
masked pixels back-projected with the sensor depth, as the node computes it) from the extent of
the object's visible surface in the noise-free depth; over all objects each refinement labels,
over those that every refinement labels (like for like) and over those each finds (label IoU at
least FOUND_IOU).

Usage: ``python scripts/eval_miniature.py MODEL_DIR [--scenes 200] [--threshold 0.3]``.
"""

import argparse
import json
from pathlib import Path
import sys
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))

import cv2  # noqa: E402
import torch  # noqa: E402

from clipseg_ros.core.depth_targets import (  # noqa: E402
    axis_quantiles, CameraModel, EXTENT_FRACTIONS, prompt_targets)
from clipseg_ros.core.engine import ClipSegEngine, PreprocessConfig  # noqa: E402
from clipseg_ros.core.refine import RefineSettings  # noqa: E402
from clipseg_ros.tools.calibration_scenes import synthetic_calibration_set  # noqa: E402
from clipseg_ros.tools.scenes import (  # noqa: E402
    all_kinds, COLOURS, phrase, PHRASINGS, render_scene, SHAPES)

# An object counts as found where its label image's IoU reaches this.
FOUND_IOU = 0.8
# Seeds the training script keeps for evaluation (scripts/train_miniature.py EVAL_SEED_BASE).
EVAL_SEED_BASE = 9_000_000


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def border_band(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """The pixels within ``width`` pixels (Chebyshev) of a mask's border, on either side; the
    frame's edge counts as a border."""
    kernel = np.ones((3, 3), np.uint8)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inner = cv2.erode(padded, kernel, iterations=width)[1:-1, 1:-1].astype(bool)
    outer = cv2.dilate(mask.astype(np.uint8), kernel, iterations=width).astype(bool)
    return outer & ~inner


def boundary_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the 3-pixel border bands of two bool masks."""
    return iou(border_band(predicted), border_band(truth))


def visible_extent(scene, mask: np.ndarray) -> np.ndarray:
    """(2, 3) extent of an object's visible surface from the noise-free depth."""
    rows, columns = np.nonzero(mask & (scene.depth_exact_m > 0))
    z = scene.depth_exact_m[rows, columns].astype(np.float64)
    i = scene.intrinsics
    points = np.stack([(columns - i.cx) * z / i.fx, (rows - i.cy) * z / i.fy, z], axis=1)
    return axis_quantiles(points, EXTENT_FRACTIONS)


def extent_errors(scene, labels: np.ndarray) -> dict[int, float]:
    """Mean absolute extent error (mm) of each object labelled with any pixel of depth, by the
    object's index in the scene."""
    i = scene.intrinsics
    camera = CameraModel(i.width, i.height, i.fx, i.fy, i.cx, i.cy)
    depth = np.where(scene.depth_m > 0, scene.depth_m, np.nan).astype(np.float32)
    targets = prompt_targets(labels, depth, camera, len(scene.objects))
    errors = {}
    for j, obj in enumerate(scene.objects):
        if not np.isfinite(targets.extent_min[j]).all():
            continue
        predicted = np.stack([targets.extent_min[j], targets.extent_max[j]])
        errors[j] = 1e3 * float(np.abs(predicted - visible_extent(scene, obj.mask)).mean())
    return errors


def score_refinement(engine: ClipSegEngine, scene_index: int, scene, prompts: list,
                     supported: list[int], negatives: int, threshold: float,
                     settings: RefineSettings | None, score: 'Scores') -> None:
    """Score one scene's text, support-image and joint masks under one refinement."""
    sensor_depth = np.where(scene.depth_m > 0, scene.depth_m, np.nan).astype(np.float32)
    depth = sensor_depth if settings is not None and settings.depth_weight > 0 else None
    result = engine.segment(scene.rgb, prompts, threshold=threshold, return_probabilities=True,
                            refine=settings, depth_m=depth)
    masks = result.probabilities >= threshold
    row = 0
    for template in PHRASINGS:
        for obj in scene.objects:
            score.text[template].append(iou(masks[row], obj.mask))
            score.text_boundary.append(boundary_iou(masks[row], obj.mask))
            row += 1
    row += negatives
    for j in supported:
        score.support.append(iou(masks[row], scene.objects[j].mask))
        score.support_boundary.append(boundary_iou(masks[row], scene.objects[j].mask))
        row += 1
    joint = engine.segment(scene.rgb, engine.text_prompts([phrase(o) for o in scene.objects]),
                           threshold=threshold, refine=settings, depth_m=depth)
    for j, obj in enumerate(scene.objects):
        score.joint.append(iou(joint.labels == j + 1, obj.mask))
        score.joint_by_object[scene_index, j] = score.joint[-1]
        score.joint_boundary.append(boundary_iou(joint.labels == j + 1, obj.mask))
    score.extent_mm.update({(scene_index, j): error
                            for j, error in extent_errors(scene, joint.labels).items()})


class Scores:
    """mIoU and boundary IoU lists of one refinement."""

    def __init__(self) -> None:
        self.text = {template: [] for template in PHRASINGS}
        self.text_boundary: list[float] = []
        self.support: list[float] = []
        self.support_boundary: list[float] = []
        self.joint: list[float] = []
        self.joint_boundary: list[float] = []
        self.extent_mm: dict[tuple[int, int], float] = {}  # by (scene, object)
        self.joint_by_object: dict[tuple[int, int], float] = {}

    def summary(self) -> dict:
        mean = (lambda v: float(np.mean(v)) if v else None)  # noqa: E731
        return {'text_miou': mean([v for values in self.text.values() for v in values]),
                'text_boundary_iou': mean(self.text_boundary),
                'support_miou': mean(self.support),
                'support_boundary_iou': mean(self.support_boundary),
                'joint_label_miou': mean(self.joint),
                'joint_label_boundary_iou': mean(self.joint_boundary),
                'extent_error_mm': mean(list(self.extent_mm.values())),
                'extent_objects': len(self.extent_mm)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_dir', type=Path)
    parser.add_argument('--scenes', type=int, default=200)
    parser.add_argument('--threshold', type=float, default=0.3)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--resolution', type=int, default=0,
                        help='engine input size (default: the size in the model folder)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--backend', default='torch',
                        help='auto, torch or openvino (default: torch, as the model card)')
    parser.add_argument('--dtype', default='float32',
                        help='auto, float32, bfloat16 or int8 (openvino; calibrated on the '
                             "package's synthetic scenes, seeds apart from these)")
    parser.add_argument('--depth-weight', type=float, default=3.0,
                        help='depth weight of the third refinement (0: only none and guided)')
    parser.add_argument('--json', type=Path, help='also write the numbers to this file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    size = args.resolution or PreprocessConfig.from_file(
        args.model_dir / 'preprocessor_config.json').size
    calibration = synthetic_calibration_set() if args.dtype == 'int8' else None
    engine = ClipSegEngine(str(args.model_dir), device='cpu', resolution=size,
                           backend=args.backend, dtype=args.dtype, int8_calibration=calibration)
    kinds = all_kinds(SHAPES, COLOURS)
    scenes = [render_scene(EVAL_SEED_BASE + i, args.width, args.height)
              for i in range(args.scenes)]
    holders: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            holders.setdefault(obj.kind, []).append((i, j))
    rng = np.random.default_rng(1234)

    def support_from(kind: tuple[str, str], not_scene: int):
        others = [h for h in holders.get(kind, []) if h[0] != not_scene]
        if not others:
            return None
        i, j = others[int(rng.integers(len(others)))]
        return engine.image_prompt(scenes[i].rgb, scenes[i].objects[j].mask,
                                   label=phrase(kind))

    refinements = {'none': None, 'guided': RefineSettings()}
    if args.depth_weight > 0:
        refinements['guided with depth'] = RefineSettings(depth_weight=args.depth_weight)
    scores = {name: Scores() for name in refinements}
    text_ious = {template: [] for template in PHRASINGS}
    # Canonical-phrasing IoU split by whether another object of the scene shares the colour.
    by_colour: dict[str, list[float]] = {'unique colour': [], 'colour shared': []}
    support_ious, joint_ious = [], []
    empty_text, empty_support = [], []
    for index, scene in enumerate(scenes):
        present = [obj.kind for obj in scene.objects]
        absent = [k for k in kinds if k not in present]
        near = [k for k in absent if any(k[0] == p[0] or k[1] == p[1] for p in present)]
        negatives = [near[int(rng.integers(len(near)))]] if near else []
        negatives.append(absent[int(rng.integers(len(absent)))])
        texts = [template.format(shape=k[0], colour=k[1])
                 for template in PHRASINGS for k in present]
        texts += [phrase(k) for k in negatives]
        prompts = engine.text_prompts(texts)
        supports = [(j, support_from(k, index)) for j, k in enumerate(present)]
        supports = [(j, p) for j, p in supports if p is not None]
        negative_supports = [p for p in (support_from(k, index) for k in negatives)
                             if p is not None]
        prompts += [p for _, p in supports] + negative_supports
        result = engine.segment(scene.rgb, prompts, threshold=args.threshold,
                                return_probabilities=True)
        masks = result.probabilities >= args.threshold
        row = 0
        for template in PHRASINGS:
            for obj in scene.objects:
                text_ious[template].append(iou(masks[row], obj.mask))
                if template == PHRASINGS[0]:
                    shared = sum(other.kind[1] == obj.kind[1] for other in scene.objects) > 1
                    by_colour['colour shared' if shared else 'unique colour'].append(
                        text_ious[template][-1])
                row += 1
        for _ in negatives:
            empty_text.append(not masks[row].any())
            row += 1
        for j, _ in supports:
            support_ious.append(iou(masks[row], scene.objects[j].mask))
            row += 1
        for _ in negative_supports:
            empty_support.append(not masks[row].any())
            row += 1
        # All objects of the scene at once, canonical phrasing: the node's label image.
        joint = engine.segment(scene.rgb, engine.text_prompts([phrase(k) for k in present]),
                               threshold=args.threshold)
        for j, obj in enumerate(scene.objects):
            joint_ious.append(iou(joint.labels == j + 1, obj.mask))
        for name, settings in refinements.items():
            score_refinement(engine, index, scene, prompts, [j for j, _ in supports],
                             len(negatives), args.threshold, settings, scores[name])

    per_phrasing = {t: float(np.mean(v)) for t, v in text_ious.items()}
    # The extent error on the objects every refinement labels (like for like), and on those
    # each finds (label IoU >= FOUND_IOU): wrongly labelled objects' errors (tens of mm, from
    # objects sharing a colour) dominate the mean, and no refinement of the maps changes them.
    common = set.intersection(*(set(score.extent_mm) for score in scores.values()))
    found = {key for key in common
             if all(score.joint_by_object[key] >= FOUND_IOU for score in scores.values())}
    refinement_rows = {name: score.summary() for name, score in scores.items()}
    for name, score in scores.items():
        refinement_rows[name].update({
            'extent_common_objects': len(common), 'extent_found_objects': len(found),
            'extent_error_mm_common': float(np.mean([score.extent_mm[k] for k in common]))
            if common else None,
            'extent_error_mm_common_median': float(np.median(
                [score.extent_mm[k] for k in common])) if common else None,
            'extent_error_mm_found': float(np.mean([score.extent_mm[k] for k in found]))
            if found else None})
    numbers = {
        'model': str(args.model_dir), 'resolution': size, 'scenes': args.scenes,
        'backend': engine.backend, 'dtype': str(engine.dtype).replace('torch.', ''),
        'seeds': [EVAL_SEED_BASE, EVAL_SEED_BASE + args.scenes - 1],
        'frame': [args.width, args.height], 'threshold': args.threshold,
        'objects': len(text_ious[PHRASINGS[0]]),
        'text_miou': float(np.mean([v for values in text_ious.values() for v in values])),
        'text_miou_per_phrasing': per_phrasing,
        'text_miou_by_colour': {k: float(np.mean(v)) if v else None
                                for k, v in by_colour.items()},
        'text_objects_by_colour': {k: len(v) for k, v in by_colour.items()},
        'support_miou': float(np.mean(support_ious)), 'support_prompts': len(support_ious),
        'joint_label_miou': float(np.mean(joint_ious)),
        'empty_rate_text': float(np.mean(empty_text)), 'absent_text_prompts': len(empty_text),
        'empty_rate_support': float(np.mean(empty_support)),
        'absent_support_prompts': len(empty_support),
        'refinements': refinement_rows,
        'refine_settings': {name: None if settings is None else vars(settings)
                            for name, settings in refinements.items()},
        'seconds': round(time.time() - start, 1),
    }
    print(f'model {args.model_dir} at {size} px; {args.scenes} held-out scenes (seeds '
          f'{numbers["seeds"][0]}..{numbers["seeds"][1]}), {args.width}x{args.height}, '
          f'threshold {args.threshold}')
    print(f'text prompts:            mIoU {numbers["text_miou"]:.3f} '
          f'({numbers["objects"]} objects x {len(PHRASINGS)} phrasings)')
    for template, value in per_phrasing.items():
        print(f'    {template.format(colour="<colour>", shape="<shape>"):32s} {value:.3f}')
    for case, value in numbers['text_miou_by_colour'].items():
        print(f'    {PHRASINGS[0].format(colour="<colour>", shape="<shape>")}, {case}: '
              f'{value:.3f} ({numbers["text_objects_by_colour"][case]} objects)')
    print(f'support-image prompts:   mIoU {numbers["support_miou"]:.3f} '
          f'({numbers["support_prompts"]} objects, support from another held-out scene)')
    print(f'all objects at once:     mIoU {numbers["joint_label_miou"]:.3f} (label image)')
    print(f'absent-object prompts:   empty mask {numbers["empty_rate_text"]:.3f} of '
          f'{numbers["absent_text_prompts"]} text, {numbers["empty_rate_support"]:.3f} of '
          f'{numbers["absent_support_prompts"]} support-image prompts')
    print('refinement of the maps (same network output), mIoU / boundary IoU (3-pixel band):')
    for name, row in numbers['refinements'].items():
        print(f'    {name:18s} text {row["text_miou"]:.3f} / {row["text_boundary_iou"]:.3f}, '
              f'support {row["support_miou"]:.3f} / {row["support_boundary_iou"]:.3f}, '
              f'label image {row["joint_label_miou"]:.3f} / '
              f'{row["joint_label_boundary_iou"]:.3f}; 3D extent error '
              f'{row["extent_error_mm"]:.1f} mm ({row["extent_objects"]} objects), '
              f'{row["extent_error_mm_common"] or float("nan"):.1f} mm (median '
              f'{row["extent_error_mm_common_median"] or float("nan"):.1f}) on the '
              f'{row["extent_common_objects"]} every refinement labels, '
              f'{row["extent_error_mm_found"] or float("nan"):.1f} mm on the '
              f'{row["extent_found_objects"]} each finds (label IoU >= {FOUND_IOU})')
    print(f'({numbers["seconds"]:.0f} s)')
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + '\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
