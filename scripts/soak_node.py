"""Soak the installed clipseg node: 640x480 frames at 30 Hz for a chosen time.

The model (tiny on CPU by default) is slower than the camera, so the node must drop frames rather
than queue them: latency stays bounded and memory flat.  Prints latency p50/p99 (camera stamp to
`segmentation` arrival), processed and dropped counts, the node's RSS at start and end, and
where a frame's CPU goes: the node process's CPU per processed frame (every output subscribed:
mask, confidence, overlay, segmentation, instances) against the engine's own
(`ClipSegEngine.segment`, same model, back end, frames, prompts and threads, measured in this
process before the node starts). `make soak` runs it for 300 s.
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from clipseg_ros.tools.drive import (
    CameraStream, percentile_ms, rgb_image_msg, start_node_process, stop_node_process,
    synthetic_frame, use_large_image_profile)
from clipseg_ros.tools.tiny_model import write_tiny_model


PROMPTS = ['a red ball', 'floor']


def engine_cpu_per_frame(model: str, cpu_threads: int, frames: list, repeats: int = 3) -> float:
    """CPU seconds ClipSegEngine.segment takes a frame here, as the node runs it."""
    from clipseg_ros.core.engine import ClipSegEngine
    from clipseg_ros.core.options import set_cpu_threads
    from clipseg_ros.parameters import default_value, refine_settings
    set_cpu_threads(cpu_threads)
    engine = ClipSegEngine(model=model, device='cpu')
    refine = refine_settings(default_value)  # the node's default, as it runs each frame
    try:
        prompts = engine.text_prompts(PROMPTS)
        for frame in frames[:3]:  # first calls pay for lazy set-up
            engine.segment(frame, prompts, refine=refine)
        start = time.process_time()
        for _ in range(repeats):
            for frame in frames:
                engine.segment(frame, prompts, refine=refine)
        return (time.process_time() - start) / (repeats * len(frames))
    finally:
        engine.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--duration', type=float, default=300.0, help='seconds')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz')
    parser.add_argument('--model', help='model folder (default: the tiny random model)')
    # One thread: the tiny model's operators are too small to gain from a second one, which
    # only adds stalls (2 cores, 45 s A/B: p99 112-156 ms against 174-213 ms, same throughput).
    parser.add_argument('--cpu-threads', type=int, default=1,
                        help="the node's cpu_threads parameter (0 = auto)")
    parser.add_argument('--warmup', type=float, default=10.0,
                        help='seconds before the starting RSS is taken')
    args = parser.parse_args()
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_soak_'))
    model = args.model or str(write_tiny_model(scratch / 'model'))
    log_path = scratch / 'node.log'
    pixels = [synthetic_frame(640, 480, i) for i in range(30)]
    engine_cpu = engine_cpu_per_frame(model, args.cpu_threads, pixels)
    process = start_node_process({'model': model, 'device': 'cpu',
                                  'cpu_threads': str(args.cpu_threads),
                                  'prompts': json.dumps(PROMPTS)},
                                 '/soak_camera/image_raw', log_path, namespace='/soak')
    rclpy.init()
    node = rclpy.create_node('clipseg_soak_camera')
    stream = CameraStream(node, '/soak_camera/image_raw', output_namespace='/soak')
    for name in ('instances',):  # with CameraStream's four: every output the node has here
        node.create_subscription(Image, f'/soak/{name}', lambda msg: None, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    node_process = psutil.Process(process.pid)
    rss = {}

    def sample_rss(sent: int) -> None:
        elapsed = sent / args.rate
        if 'start' not in rss and elapsed >= min(args.warmup, args.duration / 2):
            rss['start'] = node_process.memory_info().rss
            rss['start_index'] = sent
            times = node_process.cpu_times()
            rss['cpu_start'] = times.user + times.system
            rss['processed_start'] = len(stream.answered('segmentation'))

    try:
        if not stream.wait_for_subscriber(timeout=120.0):
            print(f'soak: the node did not come up; see {log_path}', file=sys.stderr)
            return 1
        frames = [rgb_image_msg(frame) for frame in pixels]
        sent = stream.run(frames, args.rate, args.duration, on_tick=sample_rss)
        rss['end'] = node_process.memory_info().rss
        time.sleep(1.0)  # the last frames' outputs
        times = node_process.cpu_times()
        rss['cpu_end'] = times.user + times.system
        rss['processed_end'] = len(stream.answered('segmentation'))
        time.sleep(2.0)
        alive = process.poll() is None
    finally:
        executor.shutdown()
        stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
    # Latency after warm-up only: the first frames include lazy initialisation.
    warm = [r for i, r in enumerate(stream.records.values())
            if i >= rss.get('start_index', 0) and 'segmentation' in r.arrivals]
    latencies = np.array([r.arrivals['segmentation'] - r.sent for r in warm])
    processed = len(stream.answered('segmentation'))
    growth = (rss['end'] - rss['start']) / rss['start'] * 100.0
    node_cpu = (rss['cpu_end'] - rss['cpu_start']) / max(
        rss['processed_end'] - rss['processed_start'], 1)
    summary = {
        'duration_s': args.duration, 'rate_hz': args.rate, 'cpu_threads': args.cpu_threads,
        'sent': sent,
        'processed': processed, 'dropped': sent - processed,
        'latency_p50_ms': round(percentile_ms(latencies, 50), 1),
        'latency_p99_ms': round(percentile_ms(latencies, 99), 1),
        'latency_max_ms': round(float(latencies.max() * 1e3), 1) if len(latencies) else None,
        'rss_start_mib': round(rss['start'] / 2**20, 1),
        'rss_end_mib': round(rss['end'] / 2**20, 1), 'rss_growth_percent': round(growth, 2),
        'node_alive': alive,
        'node_cpu_ms_per_frame': round(node_cpu * 1e3, 2),
        'engine_cpu_ms_per_frame': round(engine_cpu * 1e3, 2),
        'node_over_engine': round(node_cpu / engine_cpu, 2),
    }
    print(f"soak: {args.duration:.0f} s at {args.rate:.0f} Hz, 640x480, cpu_threads "
          f"{args.cpu_threads}: sent {sent}, "
          f"processed {processed}, dropped {sent - processed}; latency p50 "
          f"{summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms "
          f"(p99/p50 {summary['latency_p99_ms'] / summary['latency_p50_ms']:.2f}); RSS "
          f"{summary['rss_start_mib']} -> {summary['rss_end_mib']} MiB ({growth:+.2f}%); CPU a "
          f"processed frame: node {summary['node_cpu_ms_per_frame']} ms, engine alone "
          f"{summary['engine_cpu_ms_per_frame']} ms ({summary['node_over_engine']:.2f}x)")
    print(json.dumps(summary))
    return 0 if alive and processed else 1


if __name__ == '__main__':
    sys.exit(main())
