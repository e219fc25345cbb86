"""Fuzz the installed clipseg node: N seeded malformed frames and service requests, then a check.

The node runs as its own process (as launch starts it) so a crash is a dead process, not a test
exception.  Prints sent / rejected / crashed counts; exits non-zero if the node died or stopped
answering correctly.  `make fuzz` runs 10,000 inputs.
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import rclpy
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage

from clipseg_ros.tools import fuzz
from clipseg_ros.tools.drive import (
    CameraStream, rgb_image_msg, start_node_process, stop_node_process, synthetic_frame)
from clipseg_ros.tools.tiny_model import write_tiny_model


def call(client, request, timeout: float = 30.0):
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        return None
    return future.result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--count', type=int, default=10000)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--transport', choices=['raw', 'compressed'], default='raw')
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_fuzz_'))
    model = write_tiny_model(scratch / 'model')
    log_path = scratch / 'node.log'
    process = start_node_process(
        {'model': str(model), 'device': 'cpu', 'resolution': '64',
         'input_transport': args.transport, 'qos_reliability': 'reliable',
         'prompts': '["mug"]'}, '/fuzz_camera/image', log_path, namespace='/fuzz')
    rclpy.init()
    node = rclpy.create_node('clipseg_fuzzer')
    compressed = args.transport == 'compressed'
    camera = CameraStream(node, '/fuzz_camera/image', output_namespace='/fuzz',
                          compressed=compressed)
    clients = {
        'text': node.create_client(SetTextPrompts, '/fuzz/clipseg/set_text_prompts'),
        'image': node.create_client(SetImagePrompt, '/fuzz/clipseg/set_image_prompt'),
        'segment': node.create_client(Segment, '/fuzz/clipseg/segment'),
    }
    diagnostics = {}
    node.create_subscription(DiagnosticArray, '/diagnostics', lambda msg: diagnostics.update(
        {kv.key: kv.value for kv in msg.status[0].values}) if msg.status else None, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(args.seed)
    counts = {'frames_sent': 0, 'requests_sent': 0, 'requests_refused': 0,
              'requests_accepted': 0, 'requests_unanswered': 0}
    crashed = 0
    try:
        # Services answer from start-up; the camera subscription exists once the model loaded.
        ready = all(client.wait_for_service(timeout_sec=120.0) for client in clients.values())
        if not ready or not camera.wait_for_subscriber(timeout=120.0):
            print(f'fuzz: the node did not come up, see {log_path}', file=sys.stderr)
            return 1
        rss_start = psutil.Process(process.pid).memory_info().rss
        generators = [('text', fuzz.malformed_text_request),
                      ('image', fuzz.malformed_image_prompt_request),
                      ('segment', fuzz.malformed_segment_request)]
        started = time.monotonic()
        for index in range(args.count):
            if process.poll() is not None:
                crashed = 1
                break
            if index % 2 == 0:
                camera.publish(fuzz.malformed_compressed(rng) if compressed
                               else fuzz.malformed_image(rng))
                counts['frames_sent'] += 1
                time.sleep(0.005)  # 200 Hz: well above any camera, below what rclpy can dispatch
                continue
            which, make = generators[(index // 2) % len(generators)]
            response = call(clients[which], make(rng))
            counts['requests_sent'] += 1
            if response is None:
                counts['requests_unanswered'] += 1
            elif response.success:
                counts['requests_accepted'] += 1
            else:
                counts['requests_refused'] += 1
        elapsed = time.monotonic() - started
        # Afterwards the node must still do its job on a good frame and a good request.
        healthy = False
        if process.poll() is None:
            response = call(clients['text'], SetTextPrompts.Request(prompts=['mug']))
            frame = synthetic_frame(64, 48, 0)
            if compressed:
                good = CompressedImage(format='png')
                good.data = cv2.imencode('.png', frame)[1].tobytes()
            else:
                good = rgb_image_msg(frame)
            answered = camera.wait_answer(camera.publish(good))
            healthy = bool(response and response.success and answered)
        crashed = int(process.poll() is not None)
        rss_end = psutil.Process(process.pid).memory_info().rss if not crashed else 0
        time.sleep(1.5)  # one more diagnostics message with the final counters
    finally:
        executor.shutdown()
        exit_code = stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
    rejected = int(diagnostics.get('frames_rejected', 0)) + counts['requests_refused']
    print(f"fuzz: sent {counts['frames_sent'] + counts['requests_sent']} inputs "
          f"({counts['frames_sent']} {args.transport} frames, {counts['requests_sent']} service "
          f"requests) in {elapsed:.0f} s; rejected {rejected} "
          f"({diagnostics.get('frames_rejected', '?')} frames as counted by the node, "
          f"{counts['requests_refused']} requests); accepted requests "
          f"{counts['requests_accepted']}; unanswered {counts['requests_unanswered']}; "
          f"crashed {crashed}; healthy afterwards {healthy}; node exit code {exit_code}; "
          f"RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB")
    return 0 if not crashed and healthy and counts['requests_unanswered'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
