"""Frames with their own depth: the installed node with depth_wait 0 (no wait) against a wait.

The node runs as launch starts it, with the tiny random model (it answers in milliseconds, as
the full model does on a GPU, so nothing else hides the depth's delay) and use_depth; this
process is an RGB-D camera: colour at --rate Hz, its aligned 16UC1 depth and camera_info
published after it (0-30 ms: `after`; 40-50 ms, after the next frame: `late`), before it
(0-10 ms), or not at all (the depth stream down). The wait settings alternate in blocks of
--block frames on the same running node (set live through its parameter service, read back
before each block), so both see the same machine state. Prints, per scenario and setting:
frames answered, the share of the frames sent with their own depth, latency p50/p99 (camera
stamp -> segmentation), and the node's depth_wait p50/p99, time-outs and frames sent at once
in a stall from /diagnostics. The last line is a JSON summary.

    python bench/depth_wait_bench.py                  # 640x480, 30 Hz, waits 0 and 0.1 s
"""

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from rcl_interfaces.srv import GetParameters, SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from clipseg_ros.tools.depth_stream import DepthFeed, stream_with_depth
from clipseg_ros.tools.drive import (
    CameraStream, percentile_ms, rgb_image_msg, service_response, start_node_process,
    stop_node_process, use_large_image_profile)
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.tiny_model import write_tiny_model

NAMESPACE = '/rgbd'
SCENARIOS = {'after': (0.0, 0.030), 'late': (0.040, 0.050), 'before': (-0.010, 0.0),
             'missing': None}


def call(client, request, timeout: float = 30.0):
    response = service_response(client, request, timeout)
    if response is None:
        raise TimeoutError(f'{client.srv_name} did not answer')
    return response


def set_depth_wait(clients, seconds: float) -> None:
    """Set depth_wait on the node and read it back: the block runs the setting it prints."""
    request = SetParameters.Request(
        parameters=[Parameter('depth_wait', value=seconds).to_parameter_msg()])
    result = call(clients['set'], request).results[0]
    if not result.successful:
        raise RuntimeError(f'depth_wait {seconds} refused: {result.reason}')
    value = call(clients['get'], GetParameters.Request(names=['depth_wait'])).values[0]
    if value.double_value != seconds:
        raise RuntimeError(f'depth_wait reads {value.double_value}, not {seconds}')


def diagnostics_values(stream: CameraStream) -> dict[str, str]:
    """The values of this node's latest status (other nodes may share /diagnostics)."""
    with stream._condition:
        statuses = [status for message in stream.diagnostics for status in message.status
                    if status.name.startswith(f'{NAMESPACE}/clipseg:')]
    return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--waits', default='0,0.1', help='depth_wait settings, seconds')
    parser.add_argument('--block', type=int, default=40, help='frames per block')
    parser.add_argument('--rounds', type=int, default=3, help='blocks per setting and scenario')
    parser.add_argument('--scenarios', default=','.join(SCENARIOS))
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split('x'))
    waits = [float(w) for w in args.waits.split(',')]
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_depth_wait_bench_'))
    model = write_tiny_model(scratch / 'model')
    process = start_node_process(
        {'model': str(model), 'device': 'cpu', 'resolution': '64', 'use_depth': 'true',
         'qos_reliability': 'reliable', 'diagnostics_period': '0.2'},
        '/rgbd/color/image_raw', scratch / 'node.log', namespace=NAMESPACE)
    rclpy.init()
    node = rclpy.create_node('depth_wait_bench_camera')
    stream = CameraStream(node, '/rgbd/color/image_raw', output_namespace=NAMESPACE,
                          keep_outputs=True, listen_to_diagnostics=True)
    scene = render_scene(3, width, height)
    feed = DepthFeed(node, f'{NAMESPACE}/depth', f'{NAMESPACE}/camera_info', scene.depth_mm(),
                     scene.intrinsics)
    clients = {'set': node.create_client(SetParameters, f'{NAMESPACE}/clipseg/set_parameters'),
               'get': node.create_client(GetParameters, f'{NAMESPACE}/clipseg/get_parameters')}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    frame = rgb_image_msg(scene.rgb)
    rng = np.random.default_rng(26)
    rows = []
    try:
        if not (clients['set'].wait_for_service(timeout_sec=120.0)
                and stream.wait_for_subscriber(timeout=60.0)
                and feed.wait_for_subscribers(60.0)):
            print(f'node did not come up; see {scratch / "node.log"}', file=sys.stderr)
            return 1
        stream_with_depth(stream, feed, frame, 10, 5.0, [0.0] * 10)  # warm-up, matched topics
        for scenario in args.scenarios.split(','):
            span = SCENARIOS[scenario]
            totals = {w: {'sent': 0, 'answered': 0, 'own': 0, 'latency': [], 'waits': []}
                      for w in waits}
            for _ in range(args.rounds):
                for wait in waits:
                    set_depth_wait(clients, wait)
                    delays = [None] * args.block if span is None else \
                        list(rng.uniform(*span, args.block))
                    stream.records.clear()
                    result = stream_with_depth(stream, feed, frame, args.block, args.rate,
                                               delays)
                    total = totals[wait]
                    total['sent'] += result.sent
                    total['answered'] += result.answered
                    total['own'] += result.with_own_depth
                    total['latency'].extend(result.latencies_s)
                    if span is None:  # the stream resumes between blocks, as a driver would
                        feed.publish(node.get_clock().now().to_msg())
            values = diagnostics_values(stream)
            for wait, total in totals.items():
                latency = np.array(total['latency'])
                row = {'scenario': scenario, 'depth_wait_s': wait, 'sent': total['sent'],
                       'answered': total['answered'], 'own_depth': total['own'],
                       'own_depth_share': round(total['own'] / max(total['sent'], 1), 4),
                       'latency_p50_ms': round(percentile_ms(latency, 50), 1),
                       'latency_p99_ms': round(percentile_ms(latency, 99), 1)}
                rows.append(row)
                print(f"{scenario:8s} depth_wait {wait:4.2f} s: {row['answered']:4d} of "
                      f"{row['sent']} answered, {row['own_depth']:4d} with their own depth "
                      f"({100 * row['own_depth_share']:5.1f} % of sent), latency p50 "
                      f"{row['latency_p50_ms']:6.1f} ms, p99 {row['latency_p99_ms']:6.1f} ms")
            print(f"  node (all blocks so far): depth wait p50 {values.get('depth_wait_p50_ms')}"
                  f" ms, p99 {values.get('depth_wait_p99_ms')} ms (recent 300 frames), "
                  f"time-outs {values.get('depth_wait_timeouts')}, sent at once in a stall "
                  f"{values.get('depth_wait_skipped')}, frames without depth "
                  f"{values.get('depth_frames_without_depth')}")
    finally:
        executor.shutdown()
        stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps({'size': args.size, 'rate_hz': args.rate, 'rows': rows}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
