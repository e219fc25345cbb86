"""Frames a clipseg node gets from a camera in another process, by reliability, without profile.

For each frame size, camera reliability (reliable, best_effort) and node `qos_reliability`
(auto, best_effort): a fresh installed clipseg node (tiny random model, CPU, resolution 64:
inference is not what is measured) and tools/camera_probe.py in a process of its own, neither
with the Fast DDS profile (use_fastdds_profile:=false), as a camera driver started apart from
the launch file is. The probe sends --frames frames at --rate Hz, once the node processed a
warm-up frame (a node still loading its model receives frames but processes none), and reads
how many the node received, processed and dropped for a newer one from its /diagnostics
counters. Checks that
each run subscribed with the reliability the mode implies (auto: the camera's) and that every
frame received was processed or dropped, then prints a table and JSON.

    python bench/qos_bench.py                     # 640x480 and 1280x720, 30 Hz, 100 frames
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from clipseg_ros import launch_args
from clipseg_ros.tools.drive import installed_node_command, stop_node_process
from clipseg_ros.tools.tiny_model import write_tiny_model

PROFILE_VARIABLES = (launch_args.PROFILE_ENV, launch_args.LEGACY_PROFILE_ENV)


def without_profile() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}


def one_run(model: str, size: str, camera: str, mode: str, args, log_path: Path) -> dict:
    namespace = f'/qos_bench_{camera}_{mode}_{size}'
    command = installed_node_command({'model': model, 'device': 'cpu', 'resolution': '64',
                                      'qos_reliability': mode, 'publish_overlay': 'false'},
                                     'image', namespace)
    with open(log_path, 'w') as log:
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env=without_profile())
    try:
        probe = subprocess.run(
            [sys.executable, '-m', 'clipseg_ros.tools.camera_probe', '--topic',
             f'{namespace}/image', '--node', f'{namespace}/clipseg', '--reliability', camera,
             '--size', size, '--rate', str(args.rate), '--frames', str(args.frames),
             '--timeout', '120'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=without_profile(),
            timeout=600)
    finally:
        stop_node_process(node)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    if 'error' in result:
        raise SystemExit(f'{size} {camera} camera, node {mode}: {result["error"]}')
    expected = camera if mode == 'auto' else mode
    if result['subscription'] != expected:  # the configuration printed is the one that ran
        raise SystemExit(f'{size} {camera} camera, node {mode}: the node subscribed '
                         f"{result['subscription']}, not {expected}")
    outcomes = sum(result[key] for key in ('processed', 'dropped', 'rejected', 'failed'))
    if outcomes != result['received'] or result['rejected'] or result['failed']:
        raise SystemExit(f'{size} {camera} camera, node {mode}: frames received but not all '
                         f'processed or dropped for a newer one: {result}\n' +
                         log_path.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--frames', type=int, default=100)
    args = parser.parse_args()
    if any(os.environ.get(name) for name in PROFILE_VARIABLES):
        print('note: the Fast DDS profile variable is removed for both processes',
              file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_qos_bench_'))
    rows = []
    try:
        model = str(write_tiny_model(scratch / 'model'))
        print('| size | camera | node qos_reliability | subscribed | received / sent | '
              'processed | dropped for a newer frame |\n|---|---|---|---|---|---|---|',
              flush=True)
        for size in args.sizes.split(','):
            for camera in ('reliable', 'best_effort'):
                for mode in ('auto', 'best_effort'):
                    result = one_run(model, size, camera, mode, args,
                                     scratch / f'{size}_{camera}_{mode}.log')
                    rows.append({**result, 'mode': mode})
                    print(f"| {size} | {camera} | {mode} | {result['subscription']} | "
                          f"{result['received']} / {result['sent']} | {result['processed']} | "
                          f"{result['dropped']} |",
                          flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'benchmark': 'qos_bench', 'rate_hz': args.rate, 'results': rows}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
