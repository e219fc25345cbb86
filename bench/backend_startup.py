"""
Configure time of the engine per back end: torch, OpenVINO with an empty compiled-model cache
(cold: convert, store, compile) and OpenVINO again with that cache (warm: checksums, compile).

The full-size CLIPSeg architecture (random weights) is written to a temporary model folder;
each measurement is a fresh Python process constructing ``ClipSegEngine`` from that folder (the
node's configure), timed from the call to its return, imports excluded. Checks that the warm
start converted nothing and the cold one converted once. The last line is one JSON object.
Example: ``python bench/backend_startup.py --dtype bfloat16``.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile

try:
    from clipseg_ros.tools.tiny_model import write_random_model
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))
    from clipseg_ros.tools.tiny_model import write_random_model

MEASURE = '''
import json, sys, time
import torch
from clipseg_ros.core.engine import ClipSegEngine
torch.set_num_threads({threads})
start = time.perf_counter()
engine = ClipSegEngine({folder!r}, device='cpu', dtype={dtype!r}, backend={backend!r},
                       compiled_model_cache={cache!r})
seconds = time.perf_counter() - start
print(json.dumps({{'seconds': seconds, 'backend': engine.backend, 'dtype': str(engine.dtype),
                  'conversions': getattr(engine._network, 'conversions', 0)}}))
'''


def measure(folder: Path, backend: str, dtype: str, cache: str, threads: int) -> dict:
    code = MEASURE.format(folder=str(folder), backend=backend, dtype=dtype, cache=cache,
                          threads=threads)
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True, env=None, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_random_model(Path(scratch) / 'model', size='full', seed=0)
        cache = str(Path(scratch) / 'cache')
        rows = {
            'torch': measure(folder, 'torch', args.dtype, '', args.threads),
            'openvino cold': measure(folder, 'openvino', args.dtype, cache, args.threads),
            'openvino warm': measure(folder, 'openvino', args.dtype, cache, args.threads),
            'openvino, no cache': measure(folder, 'openvino', args.dtype, '', args.threads),
        }
    if rows['openvino cold']['conversions'] != 1 or rows['openvino warm']['conversions'] != 0:
        raise RuntimeError(f'the cache did not behave: {rows}')
    for name, row in rows.items():
        print(f"{name:<20} {row['seconds']:6.2f} s  ({row['backend']}, {row['dtype']}, "
              f"{row['conversions']} conversion(s))")
    print(json.dumps(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
