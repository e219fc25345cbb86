"""Fuzz the installed clipseg node: N seeded malformed frames and service requests, then a check.

The node runs as its own process (as launch starts it) so a crash is a dead process, not a test
exception, with use_depth on and every object setting at its most demanding (instances of one
pixel, tracks reported at once): every 8th input is a valid frame paired with an odd depth image
(none valid, NaN, inf, huge jumps, noise), sent before or after the frame, after a later-stamped
or an old depth image, or not at all, that must be answered.  Prints sent / rejected /
crashed counts; exits non-zero if the node died or stopped answering correctly.  `make fuzz`
runs 10,000 inputs.
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from builtin_interfaces.msg import Time
import psutil
import rclpy
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from clipseg_ros.tools import fuzz
from clipseg_ros.tools.drive import (
    CameraStream, rgb_image_msg, service_response, start_node_process, stop_node_process,
    synthetic_frame)
from clipseg_ros.tools.tiny_model import write_tiny_model


def shifted(stamp, nanoseconds: int):
    total = stamp.sec * 1_000_000_000 + stamp.nanosec + nanoseconds
    return Time(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)


def send_with_odd_depth(camera, depth_pub, info_pub, rng, compressed: bool, index: int):
    """
    A valid frame with an odd depth image and camera_info of its stamp, timed as
    fuzz.depth_timing says (before, after, missing, after a later-stamped or an old depth
    image); its timing and segmentation.
    """
    width, height = (int(n) for n in rng.integers(8, 72, 2))
    stamp = camera.node.get_clock().now().to_msg()
    depth = fuzz.odd_depth_image(rng, width, height)
    info = CameraInfo(width=width, height=height)
    info.k = [float(rng.uniform(10, 500)), 0.0, width / 2, 0.0, float(rng.uniform(10, 500)),
              height / 2, 0.0, 0.0, 1.0]
    kind, delay = fuzz.depth_timing(rng)

    def send_depth(depth_stamp) -> None:
        depth.header.stamp = info.header.stamp = depth_stamp
        depth.header.frame_id = info.header.frame_id = 'camera_optical'
        info_pub.publish(info)
        depth_pub.publish(depth)

    if kind == 'before':
        send_depth(stamp)
        time.sleep(0.01)
    elif kind == 'stale':
        send_depth(shifted(stamp, -1_000_000_000))
    frame = synthetic_frame(width, height, index)
    if compressed:
        good = CompressedImage(format='png')
        good.data = cv2.imencode('.png', frame)[1].tobytes()
    else:
        good = rgb_image_msg(frame)
    key = camera.publish(good, stamp=stamp)
    if kind == 'reordered':
        send_depth(shifted(stamp, 50_000_000))
    if kind in ('after', 'reordered', 'stale'):
        time.sleep(delay)
        send_depth(stamp)
    outputs = camera.wait_outputs(key, names=('segmentation',))
    return kind, outputs['segmentation'] if outputs is not None else None


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
         'prompts': '["mug"]', 'use_depth': 'true', 'min_instance_pixels': '1',
         'track_min_frames': '1', 'max_instances_per_prompt': '255'},
        '/fuzz_camera/image', log_path, namespace='/fuzz')
    rclpy.init()
    node = rclpy.create_node('clipseg_fuzzer')
    compressed = args.transport == 'compressed'
    camera = CameraStream(node, '/fuzz_camera/image', output_namespace='/fuzz',
                          compressed=compressed, keep_outputs=True)
    clients = {
        'text': node.create_client(SetTextPrompts, '/fuzz/clipseg/set_text_prompts'),
        'image': node.create_client(SetImagePrompt, '/fuzz/clipseg/set_image_prompt'),
        'segment': node.create_client(Segment, '/fuzz/clipseg/segment'),
    }
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    depth_pub = node.create_publisher(Image, '/fuzz/depth', reliable)
    info_pub = node.create_publisher(CameraInfo, '/fuzz/camera_info', reliable)
    diagnostics = {}
    node.create_subscription(DiagnosticArray, '/diagnostics', lambda msg: diagnostics.update(
        {kv.key: kv.value for kv in msg.status[0].values}) if msg.status else None, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(args.seed)
    counts = {'frames_sent': 0, 'requests_sent': 0, 'requests_refused': 0,
              'requests_accepted': 0, 'requests_unanswered': 0, 'depth_frames_sent': 0,
              'depth_frames_unanswered': 0, 'instances': 0, 'with_depth': 0}
    timings = {}  # depth timing: frames sent
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
            if index % 8 == 0:
                kind, answered = send_with_odd_depth(camera, depth_pub, info_pub, rng,
                                                     compressed, index)
                counts['depth_frames_sent'] += 1
                timings[kind] = timings.get(kind, 0) + 1
                if answered is None:
                    counts['depth_frames_unanswered'] += 1
                else:
                    counts['instances'] += len(answered.instances)
                    counts['with_depth'] += answered.has_depth
                continue
            if index % 2 == 0:
                camera.publish(fuzz.malformed_compressed(rng) if compressed
                               else fuzz.malformed_image(rng))
                counts['frames_sent'] += 1
                time.sleep(0.005)  # 200 Hz: well above any camera, below what rclpy can dispatch
                continue
            which, make = generators[(index // 2) % len(generators)]
            response = service_response(clients[which], make(rng))
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
            response = service_response(clients['text'], SetTextPrompts.Request(prompts=['mug']))
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
    sent = counts['frames_sent'] + counts['requests_sent'] + counts['depth_frames_sent']
    print(f"fuzz: sent {sent} inputs ({counts['frames_sent']} malformed {args.transport} "
          f"frames, {counts['requests_sent']} service requests, "
          f"{counts['depth_frames_sent']} valid frames with odd depth) in {elapsed:.0f} s; "
          f"rejected {rejected} "
          f"({diagnostics.get('frames_rejected', '?')} frames as counted by the node, "
          f"{counts['requests_refused']} requests); accepted requests "
          f"{counts['requests_accepted']}; unanswered {counts['requests_unanswered']}; "
          f"crashed {crashed}; healthy afterwards {healthy}; node exit code {exit_code}; "
          f"RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB; valid frames with odd "
          f"depth {counts['depth_frames_sent']} ({counts['depth_frames_unanswered']} "
          f"unanswered, {counts['with_depth']} with depth, {counts['instances']} instances "
          f'in their answers; depth timing {timings})')
    return 0 if not crashed and healthy and counts['requests_unanswered'] == 0 \
        and counts['depth_frames_unanswered'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
