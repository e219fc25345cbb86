"""
Is int8 good enough on your frames? Segments a folder of images with the same model in
float32 and in int8 (both on OpenVINO) and prints, per prompt, the IoU of the int8 masks with
the float32 masks and the largest probability difference.

IoU is pooled over the images (intersection and union pixels added up), so an image where
neither precision marks anything counts as agreement; a prompt that neither marks anywhere
gets IoU 1. Use frames that int8 was not calibrated on (``--calibration``: a folder of other
frames; default the package's synthetic scenes). Example::

    python scripts/compare_int8.py CIDAS/clipseg-rd64-refined ~/frames \\
        --prompts 'a mug' 'a person' --calibration ~/calibration_frames --min-iou 0.9

The last line is one JSON object; with ``--min-iou`` the exit code is 1 when a prompt falls
below it.
"""

import argparse
import json
from pathlib import Path
import sys
import time

try:
    from clipseg_ros.core.engine import ClipSegEngine
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))
    from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.int8_calibration import IMAGE_SUFFIXES
import cv2
import numpy as np
import torch


def read_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(name, RGB) of every image in ``folder`` (its own files, in name order)."""
    if not folder.is_dir():
        raise SystemExit(f'{folder} is not a folder')
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f'{path} is not an image OpenCV can decode')
        images.append((path.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    if not images:
        raise SystemExit(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return images


def compare(float32: ClipSegEngine, int8: ClipSegEngine, images, prompts: list[str],
            threshold: float) -> list[dict]:
    """Per prompt: pooled IoU of the two precisions' masks, largest probability difference."""
    reference, quantized = float32.text_prompts(prompts), int8.text_prompts(prompts)
    intersection = np.zeros(len(prompts))
    union = np.zeros(len(prompts))
    largest = np.zeros(len(prompts))
    for _, rgb in images:
        ours = int8.segment(rgb, quantized, threshold, return_probabilities=True)
        theirs = float32.segment(rgb, reference, threshold, return_probabilities=True)
        for k in range(len(prompts)):
            mine, base = ours.labels == k + 1, theirs.labels == k + 1
            intersection[k] += np.count_nonzero(mine & base)
            union[k] += np.count_nonzero(mine | base)
            largest[k] = max(largest[k], float(np.abs(
                ours.probabilities[k] - theirs.probabilities[k]).max()))
    return [{'prompt': prompt,
             'iou': float(intersection[k] / union[k]) if union[k] else 1.0,
             'marked_pixels': int(union[k]),
             'max_probability_difference': float(largest[k])}
            for k, prompt in enumerate(prompts)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='hub id or model folder')
    parser.add_argument('images', type=Path, help='folder of images to compare on')
    parser.add_argument('--prompts', nargs='+', required=True)
    parser.add_argument('--calibration', default='',
                        help="folder of frames int8 is quantized from ('' = the package's "
                             'synthetic scenes)')
    parser.add_argument('--threshold', type=float, default=0.3)
    parser.add_argument('--resolution', type=int, default=0)
    parser.add_argument('--cache', default='auto', help="compiled-model cache ('' = none)")
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0 = torch default)')
    parser.add_argument('--min-iou', type=float, help='exit 1 when a prompt scores below it')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = read_images(args.images)
    calibration = args.calibration
    if not calibration:
        from clipseg_ros.tools.calibration_scenes import synthetic_calibration_set
        calibration = synthetic_calibration_set()
    start = time.perf_counter()
    common = {'device': 'cpu', 'backend': 'openvino', 'resolution': args.resolution,
              'compiled_model_cache': args.cache}
    float32 = ClipSegEngine(args.model, dtype='float32', **common)
    int8 = ClipSegEngine(args.model, dtype='int8', int8_calibration=calibration, **common)
    print(f'{args.model}: float32 against {int8.runtime_summary}; {len(images)} images; '
          f'loaded in {time.perf_counter() - start:.0f} s')
    rows = compare(float32, int8, images, list(args.prompts), args.threshold)
    print(f"{'prompt':<32} {'IoU':>6} {'marked px':>10} {'largest prob. diff':>18}")
    for row in rows:
        print(f"{row['prompt'][:32]:<32} {row['iou']:>6.3f} {row['marked_pixels']:>10} "
              f"{row['max_probability_difference']:>18.4f}")
    print(json.dumps({'model': args.model, 'images': len(images), 'threshold': args.threshold,
                      'runtime': int8.runtime_summary, 'prompts': rows}))
    if args.min_iou is not None and any(row['iou'] < args.min_iou for row in rows):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
