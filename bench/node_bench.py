"""End-to-end benchmark: the installed clipseg node fed by a camera publisher.

For each input size and prompt count it measures, in two phases:
  * side by side, frame by frame: ClipSegEngine.segment in this process (no ROS), then the same
    frame through the node, waiting for its outputs before the next, so both sides see the
    same machine state on a noisy host; the node's overhead over the engine is the ratio of
    their p50s minus 1 (latency = camera header stamp -> arrival of `mask`, `confidence` and
    `segmentation`);
  * a camera stream at a fixed rate: latency p50/p99, output rate and dropped frames.
Beside each engine frame of the first phase it times, in this process, the node's 3D step and
its objects step (instances with depth and tracking, on a scene with known objects, checked to
find and track every one of them; see depth_bench.py), wall and CPU, against the engine's.
Uses the full-size CLIPSeg architecture with random weights (latency does not depend on weight
values) unless --model names real weights.  The last line is a JSON summary.

    python bench/node_bench.py                      # CPU here: 640x480 and 1280x720, N=1,4,13
    python bench/node_bench.py --device cuda --dtype float16 --compile-mode cuda_graphs
    python bench/node_bench.py --all-outputs   # also overlay and instances subscribed and built
"""

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from clipseg_ros_interfaces.srv import SetTextPrompts
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
import torch

from clipseg_ros.core.depth_targets import CameraModel
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.options import set_cpu_threads
from clipseg_ros.core.refine import RefineSettings
from clipseg_ros.tools.drive import (
    CameraStream, percentile_ms, rgb_image_msg, start_node_process, stop_node_process,
    synthetic_frame, use_large_image_profile)
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.tiny_model import write_random_model
from depth_bench import ObjectsStep, three_d_step  # bench/ is the script's folder
from refine_bench import RefineStep

PROMPT_POOL = ['a red ball', 'the floor', 'a wall', 'a person', 'a mug', 'a table', 'a chair',
               'a door', 'a window', 'a robot arm', 'a box', 'a bottle', 'a cable']
OUTPUT_NAMES = ('mask', 'confidence', 'segmentation')


def parse_size(text: str) -> tuple:
    width, height = text.lower().split('x')
    return int(width), int(height)


def timed_segment(engine: ClipSegEngine, frame, prompts) -> float:
    return timed_segment_labels(engine, frame, prompts)[0]


def timed_segment_labels(engine: ClipSegEngine, frame, prompts) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    # the node's default refinement, as the node runs it; returns host arrays: device work done
    result = engine.segment(frame, prompts, refine=RefineSettings())
    return time.perf_counter() - start, result.labels


def timed_depth_step(labels: np.ndarray, depth: tuple, prompt_count: int) -> float:
    """The node's 3D step for one frame with depth (see depth_bench.py)."""
    depth_mm, camera = depth
    start = time.perf_counter()
    three_d_step(labels, depth_mm, camera, prompt_count)
    return time.perf_counter() - start


def scene_depth(width: int, height: int) -> tuple:
    """An aligned 16UC1 depth image and its camera, from a synthetic scene of this size."""
    scene = render_scene(11, width, height)
    i = scene.intrinsics
    return scene.depth_mm(), CameraModel(i.width, i.height, i.fx, i.fy, i.cx, i.cy)


def side_by_side(engine: ClipSegEngine, stream: CameraStream, frames, msgs, prompts,
                 count: int) -> dict:
    """Alternate one engine-only frame and the same frame through the node, `count` times."""
    encoded = engine.text_prompts(prompts)
    timed_segment(engine, frames[0], encoded)  # warm-up
    depth = scene_depth(frames[0].shape[1], frames[0].shape[0])
    objects = ObjectsStep(len(encoded), frames[0].shape[1], frames[0].shape[0])
    objects.run()  # warm-up, checked with the rest
    refine = RefineStep(engine, frames[0], encoded)
    refine.run()  # warm-up
    engine_s, depth_s, latency_s, node_inference_s = [], [], [], []
    engine_cpu_s, objects_s, refine_s = [], [], []
    for index in range(count):
        start_cpu = time.process_time()
        seconds, labels = timed_segment_labels(engine, frames[index % len(frames)], encoded)
        engine_cpu_s.append(time.process_time() - start_cpu)
        engine_s.append(seconds)
        depth_s.append(timed_depth_step(labels, depth, len(encoded)))
        objects_s.append(objects.run())
        refine_s.append(refine.run())
        key = stream.publish(msgs[index % len(msgs)])
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and \
                not set(OUTPUT_NAMES) <= set(stream.records[key].arrivals):
            time.sleep(0.001)
        record = stream.records[key]
        if set(OUTPUT_NAMES) <= set(record.arrivals):
            latency_s.append(max(record.arrivals[n] for n in OUTPUT_NAMES) - record.sent)
            node_inference_s.append(record.inference_s)
    if objects.problem():
        raise RuntimeError(f'the objects step did not run as printed: {objects.problem()}')
    return {'engine': np.array(engine_s), 'depth_step': np.array(depth_s),
            'latency': np.array(latency_s),
            'node_inference': np.array(node_inference_s),
            'engine_cpu': np.array(engine_cpu_s), 'objects': np.array(objects_s),
            'objects_per_frame': objects.expected, 'refine': np.array(refine_s)}


def objects_costs(paired: dict) -> dict:
    """The objects step's p50 beside the engine's, wall and CPU, for the summary row."""
    engine_cpu = percentile_ms(paired['engine_cpu'], 50)
    objects_cpu = percentile_ms(paired['objects'][:, 1], 50)
    return {'objects_per_frame': paired['objects_per_frame'],
            'objects_step_p50_ms': round(percentile_ms(paired['objects'][:, 0], 50), 3),
            'objects_step_cpu_p50_ms': round(objects_cpu, 3),
            'engine_cpu_p50_ms': round(engine_cpu, 1),
            'objects_step_cpu_ratio': round(objects_cpu / engine_cpu, 5)}


def check_same_runtime(log_path: Path, engine: ClipSegEngine) -> None:
    """Fail unless the node loaded the device, dtype and runtime of the engine printed."""
    loaded = (f'on {engine.device} ({engine.dtype},', f'runtime: {engine.runtime_summary}')
    if not all(part in log_path.read_text() for part in loaded):
        raise RuntimeError(f'the node did not load {loaded} like the engine beside it; see '
                           f'{log_path}')


def set_prompts(node, client, prompts) -> None:
    done = threading.Event()
    future = client.call_async(SetTextPrompts.Request(prompts=prompts))
    future.add_done_callback(lambda _: done.set())
    if not done.wait(60.0) or not future.result().success:
        raise RuntimeError(f'could not set prompts {prompts}')


def run_stream(stream: CameraStream, msgs, rate_hz: float, frames: int) -> dict:
    stream.records.clear()
    sent = stream.run(msgs, rate_hz, frames / rate_hz)
    deadline = time.monotonic() + 30.0
    last = max(stream.records, key=lambda k: stream.records[k].sent)
    while time.monotonic() < deadline and \
            not set(OUTPUT_NAMES) <= set(stream.records[last].arrivals):
        time.sleep(0.05)
    answered = [r for r in stream.records.values() if set(OUTPUT_NAMES) <= set(r.arrivals)]
    latencies = np.array([max(r.arrivals[n] for n in OUTPUT_NAMES) - r.sent for r in answered])
    inference = np.array([r.inference_s for r in answered if r.inference_s is not None])
    arrivals = sorted(r.arrivals['segmentation'] for r in answered)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float('nan')
    to_mask = np.array([r.arrivals['mask'] - r.sent for r in answered])
    return {'sent': sent, 'processed': len(answered), 'dropped': sent - len(answered),
            'camera_to_mask_p50_ms': percentile_ms(to_mask, 50),
            'camera_to_mask_p99_ms': percentile_ms(to_mask, 99),
            'latency_p50_ms': percentile_ms(latencies, 50),
            'latency_p99_ms': percentile_ms(latencies, 99),
            'node_inference_p50_ms': percentile_ms(inference, 50),
            'output_rate_hz': (len(arrivals) - 1) / span if len(arrivals) > 1 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--prompts', default='1,4,13')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--compile-mode', default='auto')
    parser.add_argument('--cpu-threads', type=int, default=0,
                        help='torch CPU threads for the node and this process alike (0 = auto)')
    parser.add_argument('--model', help='model folder or hub id (default: full-size random)')
    parser.add_argument('--frames', type=int, default=12, help='frames per configuration')
    parser.add_argument('--rate', default='auto',
                        help="camera rate in Hz, or 'auto': 40%% of the engine's own rate so "
                             'latency is not inflated by waiting for the previous frame')
    parser.add_argument('--all-outputs', action='store_true',
                        help='every output subscribed (overlay and instances too), as rviz '
                             'and a planner together subscribe; latency waits for all')
    args = parser.parse_args()
    global OUTPUT_NAMES
    if args.all_outputs:
        OUTPUT_NAMES = ('mask', 'confidence', 'overlay', 'segmentation')
    use_large_image_profile()
    sizes = [parse_size(s) for s in args.sizes.split(',')]
    counts = [int(n) for n in args.prompts.split(',')]
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_node_bench_'))
    model = args.model or str(write_random_model(scratch / 'model', size='full'))

    rgb = {size: [synthetic_frame(*size, i) for i in range(8)] for size in sizes}
    # The node, started as launch starts it, and an engine of our own on the same model.
    process = start_node_process(
        {'model': model, 'device': args.device, 'dtype': args.dtype,
         'compile_mode': args.compile_mode, 'cpu_threads': str(args.cpu_threads),
         'publish_overlay': str(args.all_outputs).lower(), 'max_prompts': '16'},
        '/bench_camera/image_raw', scratch / 'node.log', namespace='/bench')
    set_cpu_threads(args.cpu_threads)  # the node applies the same rule to itself
    engine = ClipSegEngine(model=model, device=args.device, dtype=args.dtype,
                           compile_mode=args.compile_mode)
    device_name = torch.cuda.get_device_name(engine.device) if engine.device.type == 'cuda' \
        else f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    dtype_name = str(engine.dtype).replace('torch.', '')
    # check_same_runtime holds the node to this runtime before every configuration's figures.
    print(f'engine and node runtime: {engine.runtime_summary}')
    rclpy.init()
    node = rclpy.create_node('clipseg_bench_camera')
    stream = CameraStream(node, '/bench_camera/image_raw', output_namespace='/bench')
    if args.all_outputs:  # CameraStream keeps the others; a subscription makes it built
        node.create_subscription(Image, '/bench/instances', lambda msg: None, 10)
    client = node.create_client(SetTextPrompts, '/bench/clipseg/set_text_prompts')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    results = []
    try:
        if not client.wait_for_service(timeout_sec=300.0) or \
                not stream.wait_for_subscriber(timeout=60.0):
            print(f'node did not come up; see {scratch / "node.log"}', file=sys.stderr)
            return 1
        for size in sizes:
            msgs = [rgb_image_msg(frame) for frame in rgb[size]]
            for count in counts:
                set_prompts(node, client, PROMPT_POOL[:count])
                run_stream(stream, msgs, 2.0, 2)  # warm-up at this size and prompt count
                check_same_runtime(scratch / 'node.log', engine)
                paired = side_by_side(engine, stream, rgb[size], msgs, PROMPT_POOL[:count],
                                      args.frames)
                engine_p50 = percentile_ms(paired['engine'], 50)
                paired_p50 = percentile_ms(paired['latency'], 50)
                overhead = paired_p50 / engine_p50 - 1.0
                rate = float(args.rate) if args.rate != 'auto' else \
                    min(30.0, 0.4 * 1e3 / engine_p50)
                measured = run_stream(stream, msgs, rate, args.frames)
                row = {'width': size[0], 'height': size[1], 'prompts': count,
                       'paired_frames': len(paired['latency']),
                       'engine_p50_ms': round(engine_p50, 2),
                       'depth_step_p50_ms': round(percentile_ms(paired['depth_step'], 50), 2),
                       **objects_costs(paired),
                       # the frame maps bilinear and refined (the node's default), from one
                       # network output: what refinement adds beside the engine
                       'frame_maps_bilinear_p50_ms': round(
                           percentile_ms(paired['refine'][:, 0], 50), 2),
                       'frame_maps_refined_p50_ms': round(
                           percentile_ms(paired['refine'][:, 1], 50), 2),
                       'paired_latency_p50_ms': round(paired_p50, 2),
                       'paired_node_inference_p50_ms': round(
                           percentile_ms(paired['node_inference'], 50), 2),
                       'node_overhead_ratio': round(overhead, 4),
                       # what the node adds around its own engine call: per-frame differences
                       'node_work_p50_ms': round(percentile_ms(
                           paired['latency'] - paired['node_inference'], 50), 2),
                       'rate_hz': round(rate, 2),
                       **{k: round(v, 2) if isinstance(v, float) else v
                          for k, v in measured.items()}}
                print(f"node   {size[0]}x{size[1]} N={count}: side by side, engine p50 "
                      f"{engine_p50:.1f} ms, node latency p50 {paired_p50:.1f} ms "
                      f"(engine inside the node {row['paired_node_inference_p50_ms']:.1f} ms, "
                      f"node work {row['node_work_p50_ms']:.1f} ms), overhead "
                      f"{overhead * 100:+.1f}%; stream at {rate:.1f} Hz: latency p50 "
                      f"{row['latency_p50_ms']:.1f} ms p99 {row['latency_p99_ms']:.1f} ms "
                      f"(camera to mask p50 {row['camera_to_mask_p50_ms']:.1f} ms p99 "
                      f"{row['camera_to_mask_p99_ms']:.1f} ms), "
                      f"output {row['output_rate_hz']:.1f} Hz, dropped "
                      f"{row['dropped']}/{row['sent']}; 3D step beside the engine p50 "
                      f"{row['depth_step_p50_ms']:.2f} ms "
                      f"({100 * row['depth_step_p50_ms'] / engine_p50:.2f}% of it); objects step "
                      f"(instances + tracking, {row['objects_per_frame']} objects, with depth) "
                      f"p50 {row['objects_step_p50_ms']:.2f} ms "
                      f"({100 * row['objects_step_p50_ms'] / engine_p50:.2f}% of the engine), "
                      f"CPU {row['objects_step_cpu_p50_ms']:.2f} ms "
                      f"({100 * row['objects_step_cpu_ratio']:.2f}% of the engine's "
                      f"{row['engine_cpu_p50_ms']:.0f} ms); frame maps bilinear p50 "
                      f"{row['frame_maps_bilinear_p50_ms']:.2f} ms, refined "
                      f"{row['frame_maps_refined_p50_ms']:.2f} ms", flush=True)
                results.append(row)
    finally:
        engine.release()
        executor.shutdown()
        stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'benchmark': 'node_bench', 'device': device_name, 'dtype': dtype_name,
                      'backend': engine.backend,
                      'compile_mode': args.compile_mode, 'results': results}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
