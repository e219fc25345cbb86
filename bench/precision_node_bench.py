"""
The node's frames per second on its image topic for several back ends and precisions in one
run, and the ~/segment round trip beside the topic's frame period.

One node process per configuration (``backend:dtype``, e.g. ``torch:float32``,
``openvino:auto``, ``openvino:int8``), all started first, each in its own namespace, on the
full-size CLIPSeg architecture with random weights (speed does not depend on weight values).
Then, round after round so drifts in the machine's load hit them alike, each node in turn gets
a camera stream (640x480 at 30 Hz) for a few seconds at each prompt count, and a few ~/segment
calls on its latest frame (answered from the frame it published) and on a given image
(segmented afresh). Output frames per second = answered frames over the span of their
arrivals; the topic's frame period is its inverse. ``--isa`` runs the nodes under
``ONEDNN_MAX_CPU_ISA`` (what oneDNN may use: AVX2, AVX2_VNNI, AVX512_CORE_VNNI, ...). Checks
that every node loaded the back end and precision it is listed under. The last line is JSON.

    python bench/precision_node_bench.py --configs torch:float32,openvino:auto,openvino:int8
"""

import argparse
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from clipseg_ros.tools.drive import (
    CameraStream, installed_node_command, rgb_image_msg, stop_node_process, synthetic_frame,
    use_large_image_profile)
from clipseg_ros.tools.tiny_model import write_random_model
from clipseg_ros_interfaces.srv import Segment, SetTextPrompts
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from node_bench import PROMPT_POOL, run_stream, set_prompts  # bench/ is the script's folder

READY_TIMEOUT_S = 1800.0  # int8's first quantization of the full model on a busy machine


class NodeUnderTest:
    """One node process of a configuration, and this process's stream and clients for it."""

    def __init__(self, index: int, config: str, model: str, cache: Path, isa: str,
                 threads: int, scratch: Path, node) -> None:
        self.config = config
        backend, dtype = config.split(':')
        self.namespace = f'/bench{index}'
        self.log = scratch / f'node{index}.log'
        env = dict(os.environ)
        if isa:
            env['ONEDNN_MAX_CPU_ISA'] = isa
        params = {'model': model, 'device': 'cpu', 'backend': backend, 'dtype': dtype,
                  'compiled_model_cache': str(cache), 'cpu_threads': str(threads),
                  'publish_overlay': 'false', 'max_prompts': '16'}
        topic = f'{self.namespace}_camera/image_raw'
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                installed_node_command(params, topic, self.namespace), stdout=log,
                stderr=subprocess.STDOUT, env=env)
        self.stream = CameraStream(node, topic, output_namespace=self.namespace)
        self.prompts = node.create_client(SetTextPrompts,
                                          f'{self.namespace}/clipseg/set_text_prompts')
        self.segment = node.create_client(Segment, f'{self.namespace}/clipseg/segment')
        self.runtime = ''

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            found = re.search(r'runtime: (.*)', self.log.read_text(errors='replace'))
            if found and self.stream.wait_for_subscriber(timeout=1.0):
                self.runtime = found.group(1).strip()
                break
            time.sleep(1.0)
        if not self.runtime:
            tail = self.log.read_text(errors='replace')[-2000:]  # the scratch folder goes
            raise RuntimeError(f'{self.config}: the node did not come up (exit code '
                               f'{self.process.poll()}); its log ends:\n{tail}')
        backend, dtype = self.config.split(':')
        ran = self.runtime.split(',')
        if not ran[0].startswith(backend) or (dtype != 'auto' and ran[1].split()[0] != dtype):
            raise RuntimeError(f'{self.config}: the node runs {self.runtime}')

    def segment_round_trips(self, count: int, image=None) -> list[float]:
        """Seconds of ``count`` ~/segment calls, one after the other, on the latest frame (or
        on ``image``, which the node segments afresh)."""
        times = []
        request = Segment.Request() if image is None else Segment.Request(image=image)
        for _ in range(count):
            done = threading.Event()
            start = time.perf_counter()
            future = self.segment.call_async(request)
            future.add_done_callback(lambda _: done.set())
            if not done.wait(60.0) or not future.result().success:
                raise RuntimeError(f'{self.config}: ~/segment failed')
            times.append(time.perf_counter() - start)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--configs', default='torch:float32,openvino:auto,openvino:int8')
    parser.add_argument('--prompts', default='1,13')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--seconds', type=float, default=4.0, help='stream per node and round')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--segment-calls', type=int, default=4, help='per node and round')
    parser.add_argument('--isa', default='', help='ONEDNN_MAX_CPU_ISA for the nodes')
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--model', help='model folder (default: full-size random weights)')
    parser.add_argument('--cache', type=Path, help='compiled-model cache to keep between runs '
                        '(default: a fresh one; int8 is then quantized in the run)')
    args = parser.parse_args()
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_precision_bench_'))
    model = args.model or str(write_random_model(scratch / 'model', size='full'))
    counts = [int(n) for n in args.prompts.split(',')]
    msgs = [rgb_image_msg(synthetic_frame(640, 480, i)) for i in range(8)]
    rclpy.init()
    node = rclpy.create_node('clipseg_precision_bench')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    nodes = []
    try:
        for index, config in enumerate(args.configs.split(',')):
            cache = args.cache or scratch / 'cache'
            nodes.append(NodeUnderTest(index, config, model, cache, args.isa,
                                       args.threads, scratch, node))
            nodes[-1].wait_ready()  # one at a time: the first fills the cache for the next
            print(f'{config}: {nodes[-1].runtime}', flush=True)
        frames = {(n.config, c): [0, 0.0] for n in nodes for c in counts}
        segment = {(n.config, c): [] for n in nodes for c in counts}
        given = {(n.config, c): [] for n in nodes for c in counts}
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for count in counts:
                for under_test in nodes:
                    set_prompts(node, under_test.prompts, PROMPT_POOL[:count])
                    measured = run_stream(under_test.stream, msgs, args.rate,
                                          int(args.rate * args.seconds))
                    trips = under_test.segment_round_trips(args.segment_calls)
                    fresh = under_test.segment_round_trips(args.segment_calls, msgs[0])
                    if round_index:
                        span = (measured['processed'] - 1) / measured['output_rate_hz'] \
                            if measured['output_rate_hz'] > 0 else 0.0
                        frames[(under_test.config, count)][0] += measured['processed'] - 1
                        frames[(under_test.config, count)][1] += span
                        segment[(under_test.config, count)] += trips
                        given[(under_test.config, count)] += fresh
        rows = []
        for count in counts:
            base = None
            for under_test in nodes:
                done, span = frames[(under_test.config, count)]
                rate = done / span if span > 0 else 0.0
                base = base or rate
                trip = 1e3 * float(np.median(segment[(under_test.config, count)]))
                period = 1e3 / rate if rate > 0 else float('nan')
                trip_given = 1e3 * float(np.median(given[(under_test.config, count)]))
                rows.append({'config': under_test.config, 'runtime': under_test.runtime,
                             'isa': args.isa or 'native', 'prompts': count,
                             'frames_per_s': round(rate, 2),
                             'vs_first': round(rate / base, 3) if base else 0.0,
                             'segment_p50_ms': round(trip, 1),
                             'frame_period_ms': round(period, 1),
                             'segment_vs_period': round(trip / period, 3),
                             'segment_given_image_p50_ms': round(trip_given, 1),
                             'segment_given_vs_period': round(trip_given / period, 3)})
                print(f"{under_test.config:<16} N={count:<3} {rate:6.2f} frames/s "
                      f"({rows[-1]['vs_first']:.2f}x {nodes[0].config}); ~/segment p50 "
                      f"{trip:6.1f} ms vs frame period {period:6.1f} ms "
                      f"({100 * (trip / period - 1):+.0f}%); on a given image "
                      f"{trip_given:6.1f} ms ({100 * (trip_given / period - 1):+.0f}%)",
                      flush=True)
    finally:
        executor.shutdown()
        for under_test in nodes:
            stop_node_process(under_test.process)
        node.destroy_node()
        rclpy.try_shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'benchmark': 'precision_node_bench', 'isa': args.isa or 'native',
                      'rounds': args.rounds, 'rows': rows}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
