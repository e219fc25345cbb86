"""What the clipseg node costs around inference, against the least any rclpy node pays.

Node processes take turns answering one camera stream (rounds alternate, so all see the same
host):
  * clipseg: ClipSegNode as clipseg_node runs it (single-threaded executor, worker thread,
    validation, conversion, statistics message, publishing), with an engine that returns a
    result computed once per frame size: inference costs nothing, the node and ROS remain;
  * echo: a minimal rclpy node that answers each frame with mask, confidence and segmentation
    messages of the same sizes and QoS, built the same way (the floor: Fast DDS both ways and
    rclpy's executor, serialisation and copies);
  * echo_glibc_malloc, when asked for: the echo without the allocator settings clipseg_node
    makes (main.keep_freed_memory), to measure what they are worth.
The stand-in serves every engine call the node makes per frame (segment and segment_batch; prompt
embedding stays real: once per prompt) and records in a file how often the real network ran;
the benchmark stops with an error when that is more than once per frame size or when the
stand-in served no frame, so it cannot silently measure the model again.
Latency: camera header stamp -> arrival of all three outputs in this process. Prints p50/p99
per side, each side's p50 over the echo's, and the CPU time the server process used a frame
(user + system: steadier than latency on a shared host); the last line is JSON. No GPU is
involved, so this measures the host's share of the end-to-end latency of `node_bench.py`.

    python bench/transport_bench.py                   # 640x480 and 1280x720, 3 rounds a side
    python bench/transport_bench.py --sides clipseg,echo,echo_glibc_malloc
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.drive import (
    CameraStream, installed_node_command, percentile_ms, rgb_image_msg, spin_until_shutdown,
    stop_node_process, synthetic_frame, use_large_image_profile)
from clipseg_ros.tools.tiny_model import write_tiny_model

OUTPUT_NAMES = ('mask', 'confidence', 'segmentation')
SIDES = ('clipseg', 'echo', 'echo_glibc_malloc')
SIDE_NAMES = {'clipseg': 'clipseg node without inference', 'echo': 'minimal rclpy echo',
              'echo_glibc_malloc': 'echo, glibc malloc defaults'}
CAMERA_TOPIC = '/transport_camera/image_raw'
NAMESPACE = '/transport'
# Where the clipseg server's stand-in engine writes its counts (JSON), set by the benchmark.
COUNTS_FILE_ENV = 'CLIPSEG_TRANSPORT_COUNTS'


class PrecomputedEngine(ClipSegEngine):
    """
    The real engine, run once per (frame size, prompts, threshold); later calls reuse it. Every
    per-frame entry point is stood in (segment goes through segment_batch), and the network's
    forward calls are counted, so a node that reaches the model another way is caught.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._results = {}
        self.counts = {'forward_calls': 0, 'frames_served': 0}
        network = self._network
        real_probabilities = network.probabilities

        def counted_probabilities(*call_args, **call_kwargs):
            self.counts['forward_calls'] += 1
            self._write_counts()
            return real_probabilities(*call_args, **call_kwargs)

        network.probabilities = counted_probabilities

    def _write_counts(self) -> None:
        path = os.environ.get(COUNTS_FILE_ENV)
        if path:
            Path(path).write_text(json.dumps(self.counts))

    def segment_batch(self, images_rgb, prompts, threshold=0.3, return_probabilities=False,
                      refine=None, depths_m=None):
        results = []
        for index, image_rgb in enumerate(images_rgb):
            key = (image_rgb.shape, tuple(id(p) for p in prompts), threshold,
                   return_probabilities, refine)
            if key not in self._results:
                result, = super().segment_batch(
                    [image_rgb], prompts, threshold, return_probabilities, refine,
                    None if depths_m is None else [depths_m[index]])
                self._results[key] = dataclasses.replace(result, inference_seconds=0.0)
            results.append(self._results[key])
        self.counts['frames_served'] += len(results)
        if self.counts['frames_served'] % 20 == 0:
            self._write_counts()
        return results

    def release(self) -> None:
        self._write_counts()
        super().release()


def check_stand_in(counts: dict, frame_sizes: int, answered: int) -> None:
    """Fail loudly unless the stand-in served the frames and the model ran once per size."""
    if counts.get('forward_calls', 0) > frame_sizes:
        raise SystemExit(f"the real model ran {counts['forward_calls']} times for {frame_sizes} "
                         'frame size(s): the stand-in engine was bypassed, the clipseg figures '
                         'include inference')
    if not answered:
        raise SystemExit('the clipseg node answered no frame: nothing was measured')
    if counts.get('frames_served', 0) == 0:
        raise SystemExit('the stand-in engine served no frame, yet the node answered: it '
                         'segmented some other way')


def serve_clipseg(ros_args) -> None:
    from clipseg_ros.main import main as clipseg_node_main
    clipseg_node_main(ros_args, engine_factory=PrecomputedEngine)


def serve_echo(ros_args, tune_malloc: bool = True) -> None:
    from clipseg_ros_interfaces.msg import Segmentation
    from clipseg_ros.conversions import array_to_image
    from clipseg_ros.main import keep_freed_memory
    from clipseg_ros.publishers import camera_qos, OUTPUT_QOS
    if tune_malloc:
        keep_freed_memory()  # the same allocator settings as the clipseg node
    rclpy.init(args=ros_args)
    node = rclpy.create_node('clipseg')
    publishers = {name: node.create_publisher(Segmentation if name == 'segmentation' else Image,
                                              name, OUTPUT_QOS) for name in OUTPUT_NAMES}
    outputs = {}

    def answer(msg: Image) -> None:
        size = (msg.height, msg.width)
        if size not in outputs:
            outputs[size] = (np.zeros(size, np.uint8), np.zeros(size, np.float32))
        labels, confidence = outputs[size]
        publishers['mask'].publish(array_to_image(labels, 'mono8', msg.header))
        publishers['confidence'].publish(array_to_image(confidence, '32FC1', msg.header))
        publishers['segmentation'].publish(Segmentation(header=msg.header, labels=['object']))

    node.create_subscription(Image, 'image', answer, camera_qos('best_effort'))
    spin_until_shutdown(node)


def start_server(kind: str, model: str, log_path: Path, counts_path: Path) -> subprocess.Popen:
    command = installed_node_command({'model': model, 'device': 'cpu', 'prompts': '["a ball"]',
                                      'publish_overlay': 'false'}, CAMERA_TOPIC, NAMESPACE)
    ros_args = command[command.index('--ros-args'):]
    with open(log_path, 'w') as log:
        return subprocess.Popen([sys.executable, __file__, '--serve', kind] + ros_args,
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, COUNTS_FILE_ENV: str(counts_path)})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; no psutil on the GPU kit)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def measure(stream: CameraStream, server_pid: int, msgs, rate_hz: float,
            frames: int) -> tuple:
    """Return the latencies of the answered frames and the server's CPU seconds a frame."""
    stream.run(msgs, 2.0, 1.5)  # warm-up: first frames of a size pay for lazy set-up
    time.sleep(0.5)
    stream.records.clear()
    before = cpu_seconds(server_pid)
    sent = stream.run(msgs, rate_hz, frames / rate_hz)
    time.sleep(0.5)
    cpu = (cpu_seconds(server_pid) - before) / sent
    answered = [r for r in stream.records.values() if set(OUTPUT_NAMES) <= set(r.arrivals)]
    return np.array([max(r.arrivals[n] for n in OUTPUT_NAMES) - r.sent for r in answered]), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--serve', choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument('--sides', default='clipseg,echo',
                        help="comma-separated, from: clipseg, echo, and echo_glibc_malloc (the "
                             "echo with glibc's default allocator settings)")
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--rounds', type=int, default=3, help='rounds per side and size')
    parser.add_argument('--frames', type=int, default=40, help='frames per round')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz')
    args, ros_args = parser.parse_known_args()
    if args.serve:
        ros_args = [sys.argv[0]] + ros_args
        if args.serve == 'clipseg':
            serve_clipseg(ros_args)
        else:
            serve_echo(ros_args, tune_malloc=args.serve == 'echo')
        return 0
    sides = args.sides.split(',')
    if not set(sides) <= set(SIDES) or 'echo' not in sides:
        parser.error(f'--sides takes names from {SIDES} and must include echo')
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_transport_'))
    model = str(write_tiny_model(scratch / 'model'))
    sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes.split(',')]
    rclpy.init()
    node = rclpy.create_node('clipseg_transport_camera')
    stream = CameraStream(node, CAMERA_TOPIC, output_namespace=NAMESPACE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    latencies = {(size, kind): [] for size in sizes for kind in sides}
    cpu_per_frame = {(size, kind): [] for size in sizes for kind in sides}
    try:
        # A fresh server for each size, as a camera has one size: the allocator's state
        # depends on the sizes a process has seen.
        for round_index in range(args.rounds):
            for size in sizes:
                msgs = [rgb_image_msg(synthetic_frame(*size, i)) for i in range(4)]
                for kind in sides:
                    counts_path = scratch / f'{kind}_counts.json'
                    counts_path.unlink(missing_ok=True)
                    process = start_server(kind, model, scratch / f'{kind}.log', counts_path)
                    try:
                        if not stream.wait_for_subscriber(timeout=120.0):
                            print(f'{kind} did not come up; see {scratch / (kind + ".log")}',
                                  file=sys.stderr)
                            return 1
                        values, cpu = measure(stream, process.pid, msgs, args.rate,
                                              args.frames)
                        latencies[size, kind].append(values)
                        cpu_per_frame[size, kind].append(cpu)
                    finally:
                        stop_node_process(process)
                        # the next server must not match this one's lingering subscription
                        while stream.publisher.get_subscription_count():
                            time.sleep(0.05)
                    if kind == 'clipseg':  # one size a server
                        check_stand_in(json.loads(counts_path.read_text()) if
                                       counts_path.exists() else {}, 1, len(values))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    results = []
    for size in sizes:
        row = {'width': size[0], 'height': size[1]}
        for kind in sides:
            values = np.concatenate(latencies[size, kind])
            row[f'{kind}_answered'] = f'{len(values)}/{args.rounds * args.frames}'
            row[f'{kind}_p50_ms'] = round(percentile_ms(values, 50), 2)
            row[f'{kind}_p99_ms'] = round(percentile_ms(values, 99), 2)
            row[f'{kind}_cpu_ms_per_frame'] = round(float(np.median(cpu_per_frame[size, kind]))
                                                    * 1e3, 2)
        for kind in sides:
            if kind != 'echo':
                row[f'{kind}_over_echo'] = round(row[f'{kind}_p50_ms'] / row['echo_p50_ms'], 3)
        print(f'{size[0]}x{size[1]}: ' + '; '.join(
            f"{SIDE_NAMES[kind]} p50 {row[f'{kind}_p50_ms']} ms p99 {row[f'{kind}_p99_ms']} ms "
            f"({row[f'{kind}_answered']}, CPU {row[f'{kind}_cpu_ms_per_frame']} ms a frame)" +
            (f", {row[f'{kind}_over_echo']:.2f}x the echo" if kind != 'echo' else '')
            for kind in sides), flush=True)
        results.append(row)
    print(json.dumps({'benchmark': 'transport_bench', 'rate_hz': args.rate, 'results': results}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
