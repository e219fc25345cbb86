"""Peak memory one frame adds in ClipSegEngine.segment, for a prompt count and frame size.

Run in a fresh process per measurement (the peak RSS of a process only grows):
``python bench/frame_memory.py --prompts 16 --size 4096x4096 [--refine guided]``. Uses the tiny
random model, so what it shows is the memory of the frame-size stages (upload, resize,
refinement, labels, statistics), not of the network. The frame is a tabletop scene scaled up, so
the refinement has borders to filter pixel by pixel.
"""

import argparse
import resource
import tempfile

import numpy as np

import cv2

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.refine import RefineSettings
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.tiny_model import write_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prompts', type=int, default=16)
    parser.add_argument('--size', default='4096x4096', help='WIDTHxHEIGHT')
    parser.add_argument('--refine', default='none', help='none or guided')
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    with tempfile.TemporaryDirectory() as folder:
        engine = ClipSegEngine(str(write_tiny_model(folder)), device='cpu', resolution=64)
    prompts = engine.text_prompts([f'prompt {i}' for i in range(args.prompts)])
    engine.segment(np.zeros((64, 64, 3), dtype=np.uint8), prompts)
    frame = cv2.resize(render_scene(5, 640, 480).rgb, (width, height),
                       interpolation=cv2.INTER_LINEAR)
    refine = RefineSettings(args.refine)
    engine.segment(frame[:64, :64].copy(), prompts, refine=refine)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = engine.segment(frame, prompts, refine=refine)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if result.labels.shape != (height, width) or result.max_confidence.shape != (args.prompts,):
        raise SystemExit(f'measured a {result.labels.shape} result for '
                         f'{result.max_confidence.shape[0]} prompts, not what is printed')
    print(f'{args.prompts} prompts, {width}x{height} frame, refine {args.refine}: peak RSS '
          f'grew by {(after - before) / 1024:.0f} MiB '
          f'(frame itself {frame.nbytes / 2**20:.0f} MiB)')


if __name__ == '__main__':
    main()
