"""
Frames of several cameras through the encoder as one batch, against one call per frame.

The full-size CLIPSeg architecture (random weights) segments B 640x480 frames for N prompts
either with one ``ClipSegEngine.segment_batch`` call or with B ``segment`` calls; the two are
timed alternately, and the script prints per (B, N) the medians and the batch's speed-up (per-call
time / batch time), after checking that the network really ran batches of 1 and of B frames
for N prompts and that the batch gave B results of the frame size. The node batches the frames
waiting from several cameras when ``batch_cameras`` is on; this says for which B that pays.
The last line is one JSON object.

    python bench/batch_bench.py                         # CPU
    python bench/batch_bench.py --device cuda           # float16 + CUDA graphs by default
"""

import argparse
import json
from pathlib import Path
import statistics
import sys

try:
    from clipseg_ros.core.engine import ClipSegEngine
except ImportError:  # a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))
    from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
from engine_bench import interleaved_times, PROMPTS  # bench/ is the script's folder
import numpy as np
import torch


def record_network_batches(engine: ClipSegEngine) -> list[tuple[int, int]]:
    """Have the engine's network note (frames, prompts) of every forward call in the list."""
    calls, network = [], engine._network
    real_probabilities = network.probabilities

    def recorded(pixel_values, embeddings):
        calls.append((int(pixel_values.shape[0]), int(embeddings.shape[0])))
        return real_probabilities(pixel_values, embeddings)

    network.probabilities = recorded
    return calls


def check_configuration(calls: list[tuple[int, int]], results, cameras: int,
                        prompts: int) -> None:
    """Fail unless the network ran batches of 1 and of B frames for N prompts, as printed."""
    if set(calls) != {(1, prompts), (cameras, prompts)}:
        raise SystemExit(f'B={cameras}, N={prompts}: the network ran (frames, prompts) '
                         f'{sorted(set(calls))}, not (1, {prompts}) and ({cameras}, {prompts})')
    shapes = {(r.labels.shape, r.max_confidence.shape) for r in results}
    if len(results) != cameras or shapes != {((480, 640), (prompts,))}:
        raise SystemExit(f'B={cameras}, N={prompts}: {len(results)} results of {shapes}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--compile-mode', default='auto')
    parser.add_argument('--resolution', type=int, default=352)
    parser.add_argument('--cameras', default='2,4', help='batch sizes B')
    parser.add_argument('--prompts', default='1,4', help='prompt counts N')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    args = parser.parse_args()
    model, tokenizer = build_random_model('full', seed=0)
    engine = ClipSegEngine.from_model(
        model, tokenizer, PREPROCESSOR_CONFIG, device=args.device, dtype=args.dtype,
        resolution=args.resolution, compile_mode=args.compile_mode,
        model_name='full-size CLIPSeg, random weights')
    name = torch.cuda.get_device_name(engine.device) if engine.device.type == 'cuda' else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'device: {engine.device} ({name}), dtype: {str(engine.dtype).replace("torch.", "")}, '
          f'compile_mode: {engine.compile_mode}, resolution {engine.resolution}')
    rng = np.random.default_rng(0)
    results = []
    calls = record_network_batches(engine)
    for cameras in (int(b) for b in args.cameras.split(',')):
        frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(cameras)]
        for count in (int(n) for n in args.prompts.split(',')):
            prompts = engine.text_prompts(list(PROMPTS[:count]))
            calls.clear()
            per_frame, batched = interleaved_times(
                [lambda: [engine.segment(f, prompts) for f in frames],
                 lambda: engine.segment_batch(frames, prompts)],
                engine.device, args.warmup, args.repeats)
            check_configuration(calls, engine.segment_batch(frames, prompts), cameras, count)
            one_by_one, together = statistics.median(per_frame), statistics.median(batched)
            row = {'cameras': cameras, 'prompts': count,
                   'one_call_per_frame_ms': round(one_by_one * 1e3, 2),
                   'one_batch_ms': round(together * 1e3, 2),
                   'batch_speedup': round(one_by_one / together, 3)}
            results.append(row)
            print(f'B={cameras} frames, N={count} prompts: {cameras} calls '
                  f'{row["one_call_per_frame_ms"]:.1f} ms, one batch {row["one_batch_ms"]:.1f} '
                  f'ms, speed-up {row["batch_speedup"]:.2f}x', flush=True)
    print(json.dumps({'benchmark': 'batch_bench', 'device': name,
                      'dtype': str(engine.dtype).replace('torch.', ''),
                      'compile_mode': engine.compile_mode, 'results': results}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
