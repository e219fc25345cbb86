"""
Where an engine frame's time goes: torch.profiler over ``ClipSegEngine.segment`` calls.

Full-size CLIPSeg architecture, random weights, one 640x480 frame. Prints the wall time per
frame (median), the CUDA kernels by total device time and the host-side operators by CPU time,
so a GPU fast-path change can be judged by what it removes.  Example:
``python bench/engine_profile.py --device cuda --dtype float16 --compile-mode cuda_graphs``.
"""

import argparse
from pathlib import Path
import statistics
import sys
import time
from typing import Optional, Sequence

try:
    from clipseg_ros.core.engine import ClipSegEngine
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))
    from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.tiny_model import (
    BENCHMARK_PROMPTS, build_random_model, PREPROCESSOR_CONFIG)
import numpy as np
from torch.profiler import profile, ProfilerActivity

PROMPTS = BENCHMARK_PROMPTS


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--compile-mode', default='auto')
    parser.add_argument('--prompts', type=int, default=1, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument('--frames', type=int, default=20, help='profiled frames')
    parser.add_argument('--rows', type=int, default=20, help='rows per table')
    args = parser.parse_args(argv)

    model, tokenizer = build_random_model('full', seed=0)
    engine = ClipSegEngine.from_model(model, tokenizer, PREPROCESSOR_CONFIG, device=args.device,
                                      dtype=args.dtype, compile_mode=args.compile_mode)
    prompts = engine.text_prompts(list(PROMPTS[:args.prompts]))
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for _ in range(10):  # warm-up: graph capture, allocator
        engine.segment(frame, prompts)

    walls = []
    for _ in range(50):
        start = time.perf_counter()
        engine.segment(frame, prompts)  # ends with the engine's own device sync
        walls.append(time.perf_counter() - start)
    print(f'{engine.device} {engine.dtype} compile_mode={engine.compile_mode} '
          f'N={args.prompts}: segment wall median {statistics.median(walls) * 1e3:.3f} ms, '
          f'min {min(walls) * 1e3:.3f} ms (50 frames, not profiled)')

    activities = [ProfilerActivity.CPU]
    if engine.device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(args.frames):
            engine.segment(frame, prompts)
    averages = prof.key_averages()
    if engine.device.type == 'cuda':
        print(averages.table(sort_by='self_cuda_time_total', row_limit=args.rows))
    print(averages.table(sort_by='self_cpu_time_total', row_limit=args.rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
