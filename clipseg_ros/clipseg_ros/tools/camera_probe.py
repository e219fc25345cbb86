"""
A camera in a process of its own, which counts what a clipseg node got of its frames.

For the QoS tests and bench/qos_bench.py: run without the Fast DDS profile in its environment,
it is the separate driver process robots have. It publishes small warm-up frames until the
node's /diagnostics show them arriving (with ``--expect``, on a subscription of that
reliability), then ``--frames`` frames of ``--size`` at ``--rate`` Hz, and prints one JSON line:
frames sent, and what the node's own counters say of them meanwhile (received, processed,
dropped for a newer frame, rejected as malformed, failed in inference).

    python -m clipseg_ros.tools.camera_probe --topic /probe/image --node /probe/clipseg \
        --reliability reliable --size 640x480 --rate 10 --frames 100 --expect reliable
"""

import argparse
import json
import sys
import time

from clipseg_ros.tools.drive import rgb_image_msg, synthetic_frame
from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

# The node's per-camera frame counters (diagnostics.py, frames_<name>) the probe reports.
FRAME_COUNTERS = ('received', 'processed', 'dropped', 'rejected', 'failed')
RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}


class NodeCounters:
    """The newest values of one node's camera status in /diagnostics."""

    def __init__(self, node, status_name: str) -> None:
        self.values: dict[str, str] = {}
        self.updates = 0
        self._status_name = status_name
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == self._status_name:
                self.values = {item.key: item.value for item in status.values}
                self.updates += 1

    def count(self, key: str) -> int:
        return int(self.values.get(key, 0))


def spin_until(executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


def probe(args) -> dict:
    node = rclpy.create_node('camera_probe')
    publisher = node.create_publisher(
        type(rgb_image_msg(synthetic_frame(8, 8, 0))), args.topic,
        QoSProfile(depth=10, reliability=RELIABILITY[args.reliability]))
    counters = NodeCounters(node, f'{args.node}: segmentation')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    warm_up = rgb_image_msg(synthetic_frame(64, 48, 0))

    def expected_reliability() -> bool:
        return not args.expect or counters.values.get('image_reliability') == args.expect

    # Warm-up: until frames are *processed* on a subscription of the expected reliability. A
    # node still loading its model counts frames received but neither processes nor drops them
    # (frame_slot.py), so waiting for a frame received would count that load as frames lost.
    start, deadline = None, time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        warm_up.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(warm_up)
        spin_until(executor, lambda: False, 0.2)
        if expected_reliability():
            start = counters.count('frames_processed') if start is None else start
            if counters.count('frames_processed') > start:
                break
    else:
        return {'error': f'no warm-up frame processed by {args.node} ({counters.values})'}
    updates = counters.updates
    spin_until(executor, lambda: counters.updates >= updates + 2, 10.0)  # counters settled
    before = {key: counters.count(f'frames_{key}') for key in FRAME_COUNTERS}
    width, height = (int(v) for v in args.size.split('x'))
    frames = [rgb_image_msg(synthetic_frame(width, height, i)) for i in range(4)]
    began = time.monotonic()
    for index in range(args.frames):
        spin_until(executor, lambda: time.monotonic() >= began + index / args.rate, 10.0)
        msg = frames[index % len(frames)]
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)

    # Until every frame the node received has an outcome (processed, dropped, rejected, failed)
    # and no frame arrived for 3 s (or all arrived); the worker may lag behind the arrivals.
    def outcomes() -> int:
        return sum(counters.count(f'frames_{key}') - before[key] for key in FRAME_COUNTERS[1:])

    last, still_since, deadline = None, time.monotonic(), time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        spin_until(executor, lambda: False, 0.2)
        received = counters.count('frames_received') - before['received']
        if received != last:
            last, still_since = received, time.monotonic()
        settled = received >= args.frames or time.monotonic() - still_since > 3.0
        if settled and outcomes() >= received:
            break
    updates = counters.updates
    spin_until(executor, lambda: counters.updates >= updates + 2, 10.0)
    result = {'sent': args.frames, 'size': args.size, 'rate_hz': args.rate,
              'publisher': args.reliability,
              'subscription': counters.values.get('image_reliability', ''),
              **{key: counters.count(f'frames_{key}') - before[key] for key in FRAME_COUNTERS}}
    executor.shutdown()
    node.destroy_node()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--topic', required=True)
    parser.add_argument('--node', required=True, help="the clipseg node's full name")
    parser.add_argument('--reliability', choices=sorted(RELIABILITY), default='reliable')
    parser.add_argument('--expect', choices=sorted(RELIABILITY),
                        help="wait until the node's image subscription has this reliability")
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--frames', type=int, default=100)
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='for the warm-up, and again for the last outcomes')
    args = parser.parse_args()
    rclpy.init()
    try:
        result = probe(args)
    finally:
        rclpy.try_shutdown()
    print(json.dumps(result), flush=True)
    return 1 if 'error' in result else 0


if __name__ == '__main__':
    sys.exit(main())
