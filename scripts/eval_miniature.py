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

Usage: ``python scripts/eval_miniature.py MODEL_DIR [--scenes 200] [--threshold 0.3]``.
"""

import argparse
import json
from pathlib import Path
import sys
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))

import torch  # noqa: E402

from clipseg_ros.core.engine import ClipSegEngine, PreprocessConfig  # noqa: E402
from clipseg_ros.tools.calibration_scenes import synthetic_calibration_set  # noqa: E402
from clipseg_ros.tools.scenes import (  # noqa: E402
    all_kinds, COLOURS, phrase, PHRASINGS, render_scene, SHAPES)

# Seeds the training script keeps for evaluation (scripts/train_miniature.py EVAL_SEED_BASE).
EVAL_SEED_BASE = 9_000_000


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


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

    per_phrasing = {t: float(np.mean(v)) for t, v in text_ious.items()}
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
    print(f'({numbers["seconds"]:.0f} s)')
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + '\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
