"""Several cameras: one clipseg node serving N cameras against N single-camera nodes.

For N in --cameras (1, 2, 4) it starts the installed node the way launch does, either once with
`cameras:=[cam0, ..]` or N times (one per camera, each in its own namespace), so the camera
topics are the same `/bench/cam<i>/image` either way; then N synthetic cameras publish 640x480
frames at --rate Hz each for --duration seconds. It prints, per configuration, the aggregate
processed frames per second, p50/p99 latency per camera (camera stamp -> `segmentation`), the
node processes' peak resident memory (summed over processes) and, on CUDA, their GPU memory.
The configurations run one after the other in one invocation, so their ratios are comparable
(this host is noisy). The last line is a JSON summary.

    python bench/cameras_bench.py                     # CPU: full-size random weights
    python bench/cameras_bench.py --device cuda       # a GPU machine
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

from clipseg_ros.tools.drive import (
    CameraStream, percentile_ms, rgb_image_msg, start_node_process, stop_node_process,
    synthetic_frame, use_large_image_profile)
from clipseg_ros.tools.tiny_model import write_random_model


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (0 once it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gpu_bytes(pids: list[int]) -> int | None:
    """GPU memory the processes hold, from nvidia-smi; None where it is not available."""
    try:
        output = subprocess.run(
            ['nvidia-smi', '--query-compute-apps=pid,used_memory',
             '--format=csv,noheader,nounits'], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = 0
    for line in output.splitlines():
        pid, mib = (field.strip() for field in line.split(','))
        if pid.isdigit() and int(pid) in pids:
            used += int(mib) * 1024 * 1024
    return used


class MemorySampler:
    """Samples the summed RSS of processes every `period` seconds; keeps the peak."""

    def __init__(self, pids: list[int], period: float = 0.25) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_bytes(pid) for pid in self.pids))
            self._stop.wait(period)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_nodes(count: int, one_node: bool, params: dict[str, str], scratch: Path) -> list:
    names = [f'cam{i}' for i in range(count)]
    if one_node:
        listed = '[' + ', '.join(names) + ']'
        return [start_node_process({**params, 'cameras': listed}, 'image',
                                   scratch / f'one_node_{count}.log', namespace='/bench')]
    return [start_node_process(params, 'image', scratch / f'node_{count}_{name}.log',
                               namespace=f'/bench/{name}') for name in names]


def check_models_loaded(scratch: Path, count: int, one_node: bool,
                        params: dict[str, str]) -> None:
    """Fail unless every node of the configuration logged the model and device printed."""
    logs = [scratch / f'one_node_{count}.log'] if one_node else \
        [scratch / f'node_{count}_cam{i}.log' for i in range(count)]
    device = '' if params['device'] == 'auto' else params['device']
    loaded = f"model '{params['model']}' on {device}"
    for log in logs:
        if loaded not in log.read_text():
            raise RuntimeError(f'{log.name} does not say "{loaded}": not the configuration '
                               'printed')


def measure(node, count: int, one_node: bool, params: dict[str, str], scratch: Path,
            frames: list, rate: float, duration: float, warmup_timeout: float) -> dict:
    processes = start_nodes(count, one_node, params, scratch)
    streams = [CameraStream(node, f'/bench/cam{i}/image', output_namespace=f'/bench/cam{i}')
               for i in range(count)]
    try:
        for stream in streams:  # each camera's first frame answered: model loaded and warm
            if not stream.wait_for_subscriber(timeout=warmup_timeout):
                raise RuntimeError(f'node did not subscribe; see the logs in {scratch}')
            deadline = time.monotonic() + warmup_timeout
            while time.monotonic() < deadline:
                key = stream.publish(frames[0])
                if stream.wait_answer(key, 'segmentation', timeout=5.0):
                    break
            else:
                raise RuntimeError(f'no answer to a warm-up frame; see the logs in {scratch}')
        check_models_loaded(scratch, count, one_node, params)
        for stream in streams:
            stream.records.clear()
        sampler = MemorySampler([p.pid for p in processes])
        start = time.monotonic()
        publishers = [threading.Thread(target=stream.run, args=(frames, rate, duration))
                      for stream in streams]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join()
        time.sleep(min(10.0, duration / 2))  # frames still in the nodes
        peak_rss = sampler.stop()
        gpu = gpu_bytes([p.pid for p in processes]) if params['device'] != 'cpu' else None
        per_camera = []
        arrivals = []
        for stream in streams:
            answered = stream.answered('segmentation')
            latencies = stream.latencies('segmentation')
            arrivals += [r.arrivals['segmentation'] for r in answered]
            per_camera.append({'sent': len(stream.records), 'processed': len(answered),
                               'latency_p50_ms': round(percentile_ms(latencies, 50), 1),
                               'latency_p99_ms': round(percentile_ms(latencies, 99), 1)})
        window = (max(arrivals) - start) if arrivals else float('nan')
        return {'cameras': count, 'nodes': 1 if one_node else count,
                'aggregate_fps': round(len(arrivals) / window, 3) if arrivals else 0.0,
                'peak_rss_mb': round(peak_rss / 2**20, 1),
                'gpu_memory_mb': None if gpu is None else round(gpu / 2**20, 1),
                'per_camera': per_camera}
    finally:
        for process in processes:
            stop_node_process(process)
        for stream in streams:
            node.destroy_publisher(stream.publisher)
            for subscription in list(node.subscriptions):
                if subscription.topic_name.startswith('/bench/'):
                    node.destroy_subscription(subscription)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cameras', default='1,2,4')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--model', help='model folder or hub id (default: full-size random)')
    parser.add_argument('--resolution', default='0', help="model input side (0: the model's)")
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second per camera')
    parser.add_argument('--duration', type=float, default=30.0, help='seconds of streaming')
    parser.add_argument('--size', default='640x480')
    args = parser.parse_args()
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_cameras_bench_'))
    model = args.model or str(write_random_model(scratch / 'model', size='full'))
    width, height = (int(v) for v in args.size.lower().split('x'))
    frames = [rgb_image_msg(synthetic_frame(width, height, i)) for i in range(8)]
    params = {'model': model, 'device': args.device, 'resolution': args.resolution,
              'publish_overlay': 'false'}
    rclpy.init()
    node = rclpy.create_node('clipseg_cameras_bench')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    results = []
    try:
        for count in (int(n) for n in args.cameras.split(',')):
            for one_node in ((True,) if count == 1 else (True, False)):
                row = measure(node, count, one_node, params, scratch, frames, args.rate,
                              args.duration, warmup_timeout=300.0)
                results.append(row)
                latency = ', '.join(f"cam{i} p50 {c['latency_p50_ms']:.0f} / p99 "
                                    f"{c['latency_p99_ms']:.0f} ms ({c['processed']}/{c['sent']})"
                                    for i, c in enumerate(row['per_camera']))
                gpu = '' if row['gpu_memory_mb'] is None else \
                    f", GPU {row['gpu_memory_mb']:.0f} MB"
                print(f"{count} camera(s) in {row['nodes']} node(s): aggregate "
                      f"{row['aggregate_fps']:.2f} frames/s, RSS {row['peak_rss_mb']:.0f} MB"
                      f"{gpu}; {latency}", flush=True)
        single = next(r for r in results if r['cameras'] == 1)
        for count in sorted({r['cameras'] for r in results if r['cameras'] > 1}):
            one = next(r for r in results if r['cameras'] == count and r['nodes'] == 1)
            many = next(r for r in results if r['cameras'] == count and r['nodes'] > 1)
            base = single['peak_rss_mb']
            speed = one['aggregate_fps'] / max(many['aggregate_fps'], 1e-9)
            print(f"{count} cameras: one node uses {one['peak_rss_mb'] / base:.2f}x the RSS of a "
                  f"single-camera node ({count} nodes: {many['peak_rss_mb'] / base:.2f}x); "
                  f'aggregate rate, one node / {count} nodes: {speed:.2f}')
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'benchmark': 'cameras_bench', 'device': args.device, 'rate_hz': args.rate,
                      'duration_s': args.duration, 'results': results}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
