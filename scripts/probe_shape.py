#!/usr/bin/env python3
"""
Measure how much a CLIPSeg model folder's vision encoder knows of shape and of colour.

The miniature model finds the named object when its colour is unique on the table and fails
when another object shares the colour, so the question is whether the encoder's patch tokens
tell shapes apart at all. This script answers it with linear probes: on held-out synthetic
scenes (the evaluation seeds of scripts/eval_miniature.py) it takes every patch that one object
covers for the most part, fits a linear read-out of that object's shape, and one of its
colour, on the patch tokens of each encoder layer of two thirds of the scenes, and prints the
accuracy on the patches of the other third, beside the share of the most common class.

``--untrained`` probes the same architecture with fresh (transformers-initialised) weights:
what random features alone give.

Usage: ``python scripts/probe_shape.py MODEL_DIR [--scenes 200] [--untrained]``.
"""

import argparse
import json
from pathlib import Path
import sys

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation  # noqa: E402

from clipseg_ros.core.engine import ClipSegEngine  # noqa: E402
from clipseg_ros.core.model_loading import load_pretrained, PreprocessConfig  # noqa: E402
from clipseg_ros.tools.scenes import COLOURS, render_scene, SHAPES  # noqa: E402

# Seeds the training script keeps for evaluation (scripts/train_miniature.py EVAL_SEED_BASE).
EVAL_SEED_BASE = 9_000_000
# A patch is labelled with an object when that object covers more than this share of it.
OBJECT_SHARE = 0.6


def load(model_dir: Path, untrained: bool):
    if untrained:
        torch.manual_seed(0)
        return CLIPSegForImageSegmentation(CLIPSegConfig.from_pretrained(str(model_dir))).eval()
    return load_pretrained(str(model_dir), torch.float32)[0].eval()


def scene_patches(model, engine: ClipSegEngine, rgb: np.ndarray, objects: list,
                  patch: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """
    Per layer, the (N, hidden) tokens of the patches one object mostly covers, and the shape
    and colour indices of those objects.
    """
    size = engine.resolution
    pixels = engine.preprocess(rgb)
    with torch.no_grad():
        hidden = model.clip.vision_model(pixel_values=pixels, output_hidden_states=True,
                                         interpolate_pos_encoding=True).hidden_states
    grid = size // patch
    shares = np.stack([cv2.resize(obj.mask.astype(np.float32), (grid, grid),
                                  interpolation=cv2.INTER_AREA) for obj in objects])
    owner = shares.argmax(axis=0).reshape(-1)
    kept = shares.max(axis=0).reshape(-1) > OBJECT_SHARE
    shape = np.array([SHAPES.index(objects[i].shape) for i in owner[kept]], dtype=np.int64)
    colour = np.array([COLOURS.index(objects[i].colour) for i in owner[kept]], dtype=np.int64)
    tokens = [layer[0, 1:].numpy()[kept] for layer in hidden]
    return tokens, shape, colour


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, classes: int) -> float:
    """Test accuracy of a softmax read-out fitted on standardised training features."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-5
    fit_x = torch.from_numpy((train_x - mean) / std)
    fit_y = torch.from_numpy(train_y)
    torch.manual_seed(0)
    readout = torch.nn.Linear(fit_x.shape[1], classes)
    optimiser = torch.optim.Adam(readout.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(readout(fit_x), fit_y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        guess = readout(torch.from_numpy((test_x - mean) / std)).argmax(dim=1).numpy()
    return float((guess == test_y).mean())


def probe(model_dir: Path, scenes: int = 200, width: int = 640, height: int = 480,
          untrained: bool = False) -> dict:
    """Return the probe accuracies per encoder layer and the majority-class shares."""
    model = load(model_dir, untrained)
    # The node's own resizing and normalisation, so the probe sees what the node feeds the model
    # (the engine holds a second copy of the trained weights, unused here).
    engine = ClipSegEngine(str(model_dir), device='cpu', resolution=PreprocessConfig.from_file(
        model_dir / 'preprocessor_config.json').size)
    patch = model.config.vision_config.patch_size
    per_scene = []
    for index in range(scenes):
        scene = render_scene(EVAL_SEED_BASE + index, width, height)
        per_scene.append(scene_patches(model, engine, scene.rgb, scene.objects, patch))
    # Split by scene, so that no object has patches on both sides.
    split = (2 * scenes) // 3
    train, test = per_scene[:split], per_scene[split:]

    def stack(part, item):
        return np.concatenate([entry[item] for entry in part])

    layers = len(per_scene[0][0])
    result = {'patches': {'fit': int(len(stack(train, 1))), 'scored': int(len(stack(test, 1)))},
              'majority': {}, 'layers': []}
    for name, item, classes in (('shape', 1, len(SHAPES)), ('colour', 2, len(COLOURS))):
        counts = np.bincount(stack(test, item), minlength=classes)
        result['majority'][name] = float(counts.max() / counts.sum())
    for layer in range(layers):
        train_x = np.concatenate([entry[0][layer] for entry in train])
        test_x = np.concatenate([entry[0][layer] for entry in test])
        result['layers'].append({
            'layer': layer,
            'shape': linear_probe(train_x, stack(train, 1), test_x, stack(test, 1),
                                  len(SHAPES)),
            'colour': linear_probe(train_x, stack(train, 2), test_x, stack(test, 2),
                                   len(COLOURS)),
        })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_dir', type=Path)
    parser.add_argument('--scenes', type=int, default=200)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--untrained', action='store_true',
                        help='probe fresh weights of the same architecture instead')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--json', type=Path, help='also write the numbers to this file')
    args = parser.parse_args(argv)
    if args.scenes < 3:
        parser.error('--scenes must be at least 3 (two thirds fit, one third scored)')
    torch.set_num_threads(args.threads)
    result = probe(args.model_dir, args.scenes, args.width, args.height, args.untrained)
    which = 'untrained weights of ' if args.untrained else ''
    print(f'linear probes of {which}{args.model_dir} on object patches of {args.scenes} '
          f'held-out scenes ({result["patches"]["fit"]} fitted, '
          f'{result["patches"]["scored"]} scored)')
    print(f'  most common class: shape {result["majority"]["shape"]:.3f}, '
          f'colour {result["majority"]["colour"]:.3f}')
    for entry in result['layers']:
        where = 'embeddings' if entry['layer'] == 0 else f'layer {entry["layer"]}'
        print(f'  {where:<11} shape {entry["shape"]:.3f}  colour {entry["colour"]:.3f}')
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
