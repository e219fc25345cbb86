"""Peak memory one frame adds in ClipSegEngine.segment, for a prompt count and frame size.

Run in a fresh process per measurement (the peak RSS of a process only grows):
``python bench/frame_memory.py --prompts 16 --size 4096x4096``. Uses the tiny random model, so
what it shows is the memory of the frame-size stages (upload, resize, labels, statistics), not
of the network.
"""

import argparse
import resource
import tempfile

import numpy as np

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.tiny_model import write_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prompts', type=int, default=16)
    parser.add_argument('--size', default='4096x4096', help='WIDTHxHEIGHT')
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    with tempfile.TemporaryDirectory() as folder:
        engine = ClipSegEngine(str(write_tiny_model(folder)), device='cpu', resolution=64)
    prompts = engine.text_prompts([f'prompt {i}' for i in range(args.prompts)])
    engine.segment(np.zeros((64, 64, 3), dtype=np.uint8), prompts)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = engine.segment(frame, prompts)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if result.labels.shape != (height, width) or result.max_confidence.shape != (args.prompts,):
        raise SystemExit(f'measured a {result.labels.shape} result for '
                         f'{result.max_confidence.shape[0]} prompts, not what is printed')
    print(f'{args.prompts} prompts, {width}x{height} frame: peak RSS grew by '
          f'{(after - before) / 1024:.0f} MiB (frame itself {frame.nbytes / 2**20:.0f} MiB)')


if __name__ == '__main__':
    main()
