"""A frame's CPU in the clipseg node with every output subscribed, against an echo that
publishes the same messages.

Two server processes take turns on one camera stream (colour, and with ``--depth`` a registered
16UC1 depth image and camera_info with each frame), every output subscribed (mask, confidence,
overlay, segmentation, instances; points and markers with depth), as rviz and a planner do:
  * clipseg: ClipSegNode as clipseg_node runs it, on an engine whose network is stood in by
    probability maps (``--masks clean``: seeded smooth blobs that fill the frame with dozens of
    components; ``ragged``: seeded fine noise, fragments and holes; ``objects``: the scene's red
    circles and green square found by their colour, as a trained model finds them): no
    inference; the engine's own maps-to-labels step, instances, tracks, 3D, overlay and every
    message remain;
  * echo: a minimal rclpy node subscribed to the same inputs that answers each frame with the
    same messages, built once before the run by the package's own code for that frame size (the
    floor: serialisation, Fast DDS both ways, rclpy's executor).
The CPU a server used per frame answered on every output (user + system, from /proc) is what
counts (a node slower than the camera drops frames and is charged for those it answered);
rounds alternate the sides. The benchmark fails when the stand-in served fewer frames than the
node answered or segmented more than once per size, or a side answered too few frames.

Each case also prints the least any node publishing these outputs adds to the echo: the steps an
echo never does (the frame to an array, each prompt labelled in its box, the overlay's copy and
blend around the labels, the images copied into messages, the point records), with the fewest
whole-array OpenCV or numpy calls, timed on the benchmark's own thread; it fails unless it ran
on the node's frame (the node's mask and confidence bytes, its image sizes and point count). The
last line is JSON.

    python bench/frame_cost_bench.py                          # 640x480, every mask kind, depth
    python bench/frame_cost_bench.py --sizes 1280x720 --masks ragged --no-depth
    python bench/frame_cost_bench.py --cpu-threads 1   # the node's torch and OpenCV on one thread
"""

import argparse
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from clipseg_ros.tools.drive import (
    installed_node_command, spin_until_shutdown, stop_node_process, use_large_image_profile)
from clipseg_ros.tools.tiny_model import write_tiny_model
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

sys.path.insert(0, str(Path(__file__).parent))
from transport_bench import cpu_seconds  # noqa: E402

CAMERA_TOPIC = '/frame_cost_camera/image_raw'
NAMESPACE = '/frame_cost'
PROMPTS = ['a red circle', 'a green square']
MASKS_ENV = 'CLIPSEG_FRAME_COST_MASKS'
COUNTS_ENV = 'CLIPSEG_FRAME_COST_COUNTS'


def outputs(with_depth: bool) -> tuple[str, ...]:
    names = ('mask', 'confidence', 'overlay', 'segmentation', 'instances')
    return names + (('points', 'markers') if with_depth else ())


def scene_frames(width: int, height: int, count: int = 4):
    """Rendered table scenes: colour and registered depth, with their intrinsics."""
    from clipseg_ros.tools.scene_sequences import several_of_a_kind
    return [several_of_a_kind(seed, width=width, height=height).scene for seed in range(count)]


def camera_messages(scene):
    """The colour image, 16UC1 depth and camera_info of a scene (stamps set when sent)."""
    from clipseg_ros.conversions import array_to_image
    from sensor_msgs.msg import CameraInfo
    colour = array_to_image(scene.rgb, 'rgb8')
    depth = array_to_image(scene.depth_mm(), 'mono16')
    depth.encoding = '16UC1'
    i = scene.intrinsics
    info = CameraInfo(width=i.width, height=i.height)
    info.k = [float(i.fx), 0.0, float(i.cx), 0.0, float(i.fy), float(i.cy), 0.0, 0.0, 1.0]
    return colour, depth, info


def stand_in_engine_class():
    """ClipSegEngine with its network's probabilities replaced by stand-in maps (counted)."""
    from clipseg_ros.core.engine import ClipSegEngine
    from clipseg_ros.tools.stand_in_maps import ColourNetwork, MASK_BLUR, SeededNetwork

    class StandInEngine(ClipSegEngine):
        """Segments each (frame size, prompts, threshold) once, from stand-in maps; later
        frames reuse that result: no inference, no preprocessing, as on a GPU."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            masks = os.environ.get(MASKS_ENV, 'ragged')
            config = self._preprocess_config
            self.stand_in = (
                ColourNetwork(config.mean, config.std, config.rescale_factor)
                if masks == 'objects' else SeededNetwork(blur=MASK_BLUR[masks]))
            self._network.probabilities = self.stand_in.probabilities
            self._results = {}
            self.frames_served = 0

        def segment_batch(self, images_rgb, prompts, threshold=0.3,
                          return_probabilities=False, refine=None, depths_m=None):
            results = []
            for index, image_rgb in enumerate(images_rgb):
                key = (image_rgb.shape, tuple(id(p) for p in prompts), threshold,
                       return_probabilities, refine)
                if key not in self._results:
                    self._results[key], = super().segment_batch(
                        [image_rgb], prompts, threshold, return_probabilities, refine,
                        None if depths_m is None else [depths_m[index]])
                results.append(self._results[key])
            self.frames_served += len(results)
            return results

        def release(self) -> None:
            path = os.environ.get(COUNTS_ENV)
            if path:
                Path(path).write_text(json.dumps({'stand_in_frames': self.frames_served,
                                                  'network_calls': self.stand_in.calls}))
            super().release()
    return StandInEngine


class _Capture:
    """What ResultPublishers needs of a node: keeps the messages it publishes."""

    def __init__(self) -> None:
        self.messages = {}

    def create_lifecycle_publisher(self, message_type, topic, qos):
        capture = self

        class Publisher:
            def get_subscription_count(self) -> int:
                return 1

            def publish(self, msg) -> None:
                capture.messages[topic] = msg
        return Publisher()

    def destroy_lifecycle_publisher(self, publisher) -> None:
        pass


def node_messages(model: str, scene, masks: str, with_depth: bool) -> dict:
    """The messages the node publishes for a scene frame, built by the package's own code."""
    return node_outputs(model, scene, masks, with_depth)[0]


def node_outputs(model: str, scene, masks: str, with_depth: bool):
    """(messages, the stand-in's result) of a scene frame."""
    from clipseg_ros.core.depth_targets import depth_in_metres, prompt_targets
    from clipseg_ros.depth_input import PairedTargets
    from clipseg_ros.objects import CameraObjects
    from clipseg_ros.parameters import default_value
    from clipseg_ros.publishers import PromptSet, ResultPublishers
    from std_msgs.msg import Header
    os.environ[MASKS_ENV] = masks
    engine = stand_in_engine_class()(model=model, device='cpu', backend='torch')
    prompt_set = PromptSet(tuple(engine.text_prompts(PROMPTS)), 1)
    result, = engine.segment_batch([scene.rgb], prompt_set.prompts, 0.3)
    engine.release()
    paired = None
    if with_depth:
        camera = scene.intrinsics  # a CameraModel
        metres = depth_in_metres(scene.depth_mm(), '16UC1', 10.0)
        paired = PairedTargets(prompt_targets(result.labels, metres, camera, len(PROMPTS), 2),
                               0, depth_m=metres, camera=camera)
    objects = CameraObjects(default_value)
    capture = _Capture()
    publishers = ResultPublishers(capture, with_depth)
    header = Header(frame_id='camera_optical')
    for index in range(3):  # tracks confirmed, as in a running node
        header.stamp.sec = index
        publishers.publish(header, scene.rgb, result, prompt_set, 0.3, True, paired, 1,
                           objects.update(header, result, paired, prompt_set))
    return capture.messages, result


def least_extra_work(model: str, scene, masks: str, with_depth: bool,
                     repeats: int = 50) -> float:
    """
    Seconds of this thread's CPU a frame for the steps an echo never does, each done with the
    fewest whole-array OpenCV or numpy calls and only where the labels are: the colour frame
    to an array, each prompt compared and labelled in its box, the frame copied and blended in
    the window around the labels (the overlay), the image outputs copied into their messages,
    and with depth that window's depth to metres and its labelled pixels' point records. What
    the node adds to the echo is at least this, before any instance, track, outline, 3D
    statistic or Segmentation message is made.
    """
    import cv2
    from clipseg_ros.conversions import array_to_image, frame_to_rgb
    from clipseg_ros.core.depth_targets import depth_in_metres, POINT_DTYPE
    messages, result = node_outputs(model, scene, masks, with_depth)
    colour, depth, _ = camera_messages(scene)
    camera = scene.intrinsics  # a CameraModel
    labels, instance_image = result.labels, np.zeros(result.labels.shape, np.uint16)
    # The engine's boxes of the prompts' pixels, which the node's instances read too.
    boxes = [tuple(int(v) for v in box) for box in result.stats.boxes]
    x_per_metre = ((np.arange(camera.width) - camera.cx) / camera.fx).astype(np.float32)
    y_per_metre = ((np.arange(camera.height) - camera.cy) / camera.fy).astype(np.float32)
    raw_depth = np.frombuffer(depth.data, np.uint16).reshape(depth.height, depth.width)

    def frame() -> dict:
        rgb = frame_to_rgb(colour, 1 << 30)
        built = {'mask': array_to_image(labels, 'mono8'),
                 'confidence': array_to_image(result.confidence, '32FC1'),
                 'instances': array_to_image(instance_image, 'mono16')}
        components = [cv2.connectedComponentsWithAlgorithm(
            cv2.compare(labels[y:y + h, x:x + w], prompt, cv2.CMP_EQ), 8, cv2.CV_32S,
            cv2.CCL_BBDT)[0] - 1 if w and h else 0
            for prompt, (x, y, w, h) in enumerate(boxes, start=1)]
        overlay = rgb.copy()
        left, top, width, height = cv2.boundingRect(labels)
        window = (slice(top, top + height), slice(left, left + width))
        if width and height:
            overlay[window] = cv2.addWeighted(rgb[window], 0.75, rgb[window], 0.25, 0.0)
        built['overlay'] = array_to_image(overlay, 'rgb8')
        if with_depth and width and height:
            metres = depth_in_metres(raw_depth[window], '16UC1', 10.0)
            labelled = labels[window]
            # Flat indices and whole-window products: 2-D fancy indexing costs several times
            # more where most of the window is labelled.
            kept = np.flatnonzero(((labelled > 0) & np.isfinite(metres)).ravel())
            cloud = np.empty(len(kept), POINT_DTYPE)
            cloud['z'] = metres.ravel().take(kept)
            cloud['x'] = (metres * x_per_metre[None, left:left + width]).ravel().take(kept)
            cloud['y'] = (metres * y_per_metre[top:top + height, None]).ravel().take(kept)
            cloud['label'] = labelled.ravel().take(kept)
            cloud['instance'] = instance_image[window].ravel().take(kept)
            built['points'] = cloud
        return {'components': components, **built}

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # this thread's CPU is then all the work
    try:
        _check_least_work(frame(), messages)
        best = float('inf')
        for _ in range(3):
            start = time.thread_time()
            for _ in range(repeats):
                frame()
            best = min(best, (time.thread_time() - start) / repeats)
    finally:
        cv2.setNumThreads(threads)
    return best


def _check_least_work(built: dict, messages: dict) -> None:
    """SystemExit unless the least work ran on the node's frame: the same mask and confidence
    bytes, images of the node's sizes, as many points, each prompt's components at least as
    many as its instances."""
    for name in ('mask', 'confidence'):
        if bytes(built[name].data) != bytes(messages[name].data):
            raise SystemExit(f'least work: its {name} is not the node\'s')
    for name in ('instances', 'overlay'):
        if len(built[name].data) != len(messages[name].data):
            raise SystemExit(f'least work: {name} of {len(built[name].data)} bytes, the node '
                             f'{len(messages[name].data)}')
    points = len(built.get('points', ()))
    if 'points' in messages and points != messages['points'].width:
        raise SystemExit(f'least work: {points} points, the node {messages["points"].width}')
    per_prompt = np.bincount([entry.prompt_index for entry in messages['segmentation'].instances
                              if entry.seen_this_frame], minlength=len(PROMPTS))
    if (np.array(built['components']) < per_prompt).any():
        raise SystemExit(f'least work: components {built["components"]} fewer than the '
                         f'instances {per_prompt.tolist()}')


def serve_clipseg(ros_args) -> None:
    from clipseg_ros.main import main as clipseg_node_main
    clipseg_node_main(ros_args, engine_factory=stand_in_engine_class())


def serve_echo(ros_args, model: str, size: tuple[int, int], masks: str,
               with_depth: bool) -> None:
    from clipseg_ros.main import keep_freed_memory
    from clipseg_ros.publishers import camera_qos, OUTPUT_QOS
    from sensor_msgs.msg import CameraInfo, Image
    keep_freed_memory()  # the clipseg node's allocator settings
    messages = node_messages(model, scene_frames(*size, 1)[0], masks, with_depth)
    rclpy.init(args=ros_args)
    node = rclpy.create_node('clipseg', namespace=NAMESPACE)
    publishers = {name: node.create_publisher(type(msg), name, OUTPUT_QOS)
                  for name, msg in messages.items()}

    def answer(msg: Image) -> None:
        for name, out in messages.items():
            if name == 'markers':
                for marker in out.markers:
                    marker.header = msg.header
            else:
                out.header = msg.header
            publishers[name].publish(out)

    qos = camera_qos('best_effort')
    node.create_subscription(Image, CAMERA_TOPIC, answer, qos)
    if with_depth:
        node.create_subscription(Image, 'depth', lambda msg: None, qos)
        node.create_subscription(CameraInfo, 'camera_info', lambda msg: None, qos)
    spin_until_shutdown(node)


def start_server(kind: str, model: str, size, masks: str, with_depth: bool, log_path: Path,
                 counts_path: Path, cpu_threads: int = 0) -> subprocess.Popen:
    params = {'model': model, 'device': 'cpu', 'backend': 'torch',
              'prompts': json.dumps(PROMPTS), 'publish_overlay': 'true',
              'use_depth': str(with_depth).lower(), 'qos_reliability': 'best_effort',
              'cpu_threads': str(cpu_threads)}
    command = installed_node_command(params, CAMERA_TOPIC, NAMESPACE)
    ros_args = command[command.index('--ros-args'):]
    extra = ['--serve', kind, '--model-dir', model, '--masks', masks,
             '--sizes', f'{size[0]}x{size[1]}'] + ([] if with_depth else ['--no-depth'])
    with open(log_path, 'w') as log:
        return subprocess.Popen([sys.executable, __file__] + extra + ros_args, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, MASKS_ENV: masks,
                                     COUNTS_ENV: str(counts_path)})


class Driver:
    """Publishes colour (+ depth, camera_info) and counts frames answered on every output."""

    def __init__(self, node, with_depth: bool) -> None:
        from clipseg_ros_interfaces.msg import Segmentation
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray
        types = {'segmentation': Segmentation, 'points': PointCloud2, 'markers': MarkerArray}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.node, self.with_depth = node, with_depth
        self.image = node.create_publisher(Image, CAMERA_TOPIC, qos)
        self.depth = node.create_publisher(Image, NAMESPACE + '/depth', qos)
        self.info = node.create_publisher(CameraInfo, NAMESPACE + '/camera_info', qos)
        self.names = outputs(with_depth)
        self.arrivals: dict[tuple, set] = {}
        self.lock = threading.Lock()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for name in self.names:
            node.create_subscription(types.get(name, Image), f'{NAMESPACE}/{name}',
                                     self._collector(name), reliable)

    def _collector(self, name: str):
        def collect(msg) -> None:
            header = msg.markers[0].header if name == 'markers' and msg.markers else \
                getattr(msg, 'header', None)
            if header is None:
                return
            with self.lock:
                self.arrivals.setdefault((header.stamp.sec, header.stamp.nanosec),
                                         set()).add(name)
        return collect

    def answered(self) -> int:
        with self.lock:
            return sum(1 for names in self.arrivals.values() if set(self.names) <= names)

    def run(self, frames, rate_hz: float, seconds: float) -> int:
        period, start, sent = 1.0 / rate_hz, time.monotonic(), 0
        while time.monotonic() - start < seconds:
            colour, depth, info = frames[sent % len(frames)]
            stamp = self.node.get_clock().now().to_msg()
            for msg in (depth, info, colour) if self.with_depth else (colour,):
                msg.header.stamp, msg.header.frame_id = stamp, 'camera_optical'
            if self.with_depth:  # depth first: the node pairs it when the colour frame comes
                self.depth.publish(depth)
                self.info.publish(info)
            self.image.publish(colour)
            sent += 1
            time.sleep(max(0.0, start + sent * period - time.monotonic()))
        return sent


def measure(driver: Driver, pid: int, frames, rate: float, seconds: float):
    driver.run(frames, rate, 2.0)  # warm-up
    time.sleep(0.5)
    with driver.lock:
        driver.arrivals.clear()
    before = cpu_seconds(pid)
    sent = driver.run(frames, rate, seconds)
    time.sleep(0.5)
    answered = driver.answered()
    return (cpu_seconds(pid) - before) / max(answered, 1), answered, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--serve', choices=('clipseg', 'echo'), help=argparse.SUPPRESS)
    parser.add_argument('--model-dir', help=argparse.SUPPRESS)
    parser.add_argument('--sizes', default='640x480')
    parser.add_argument('--masks', default='clean,ragged,objects',
                        help='clean, ragged, objects, or several joined by commas')
    parser.add_argument('--no-depth', action='store_true', help='colour only')
    parser.add_argument('--both-depths', action='store_true', help='with and without depth')
    parser.add_argument('--rounds', type=int, default=2, help='rounds per side and case')
    parser.add_argument('--seconds', type=float, default=8.0, help='measured seconds a round')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz')
    parser.add_argument('--cpu-threads', type=int, default=0,
                        help="the node's cpu_threads (torch's and OpenCV's threads; 0 = auto)")
    args, ros_args = parser.parse_known_args()
    sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes.split(',')]
    if args.serve:
        ros_args = [sys.argv[0]] + ros_args
        if args.serve == 'clipseg':
            serve_clipseg(ros_args)
        else:
            serve_echo(ros_args, args.model_dir, sizes[0], args.masks, not args.no_depth)
        return 0
    depths = [False, True] if args.both_depths else [not args.no_depth]
    use_large_image_profile()
    scratch = Path(tempfile.mkdtemp(prefix='clipseg_frame_cost_'))
    model = str(write_tiny_model(scratch / 'model'))
    rclpy.init()
    node = rclpy.create_node('clipseg_frame_cost_camera')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    drivers = {with_depth: Driver(node, with_depth) for with_depth in depths}
    rows = []
    try:
        for size in sizes:
            scenes = scene_frames(*size)
            frames = [camera_messages(scene) for scene in scenes]
            for with_depth in depths:
                for masks in args.masks.split(','):
                    row = measure_case(args, model, size, masks, with_depth,
                                       drivers[with_depth], frames, scratch, scenes[0])
                    if row is None:
                        return 1
                    rows.append(row)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'benchmark': 'frame_cost_bench', 'rate_hz': args.rate, 'results': rows}))
    return 0


def measure_case(args, model, size, masks, with_depth, driver, frames, scratch,
                 first_scene) -> dict | None:
    """One case, both sides; ``first_scene`` is the scene the echo's messages are built on."""
    cpu = {'clipseg': [], 'echo': []}
    answered = {'clipseg': 0, 'echo': 0}
    sent_total = {'clipseg': 0, 'echo': 0}
    for _ in range(args.rounds):
        for kind in ('clipseg', 'echo'):
            counts_path = scratch / 'counts.json'
            counts_path.unlink(missing_ok=True)
            process = start_server(kind, model, size, masks, with_depth,
                                   scratch / f'{kind}.log', counts_path, args.cpu_threads)
            try:
                if not _wait_for_subscriber(driver.image, 120.0):
                    print(f'{kind} did not come up; see {scratch / (kind + ".log")}',
                          file=sys.stderr)
                    return None
                per_frame, done, sent = measure(driver, process.pid, frames, args.rate,
                                                args.seconds)
            finally:
                stop_node_process(process)
                while driver.image.get_subscription_count():
                    time.sleep(0.05)
            cpu[kind].append(per_frame)
            answered[kind] += done
            sent_total[kind] += sent
            if kind == 'clipseg':
                counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
                if counts.get('stand_in_frames', 0) < done or counts.get('network_calls') != 1:
                    raise SystemExit(f'the stand-in engine served fewer frames than were '
                                     f'answered or segmented more than once ({counts}, '
                                     f'{done}): it was bypassed')
    for kind in cpu:
        if answered[kind] < 0.1 * sent_total[kind]:
            raise SystemExit(f'{kind} answered {answered[kind]} of {sent_total[kind]} frames '
                             'on every output: nothing comparable was measured')
    row = {'width': size[0], 'height': size[1], 'masks': masks, 'depth': with_depth,
           'cpu_threads': args.cpu_threads, 'outputs': list(outputs(with_depth))}
    for kind in cpu:
        row[f'{kind}_cpu_ms_per_frame'] = round(float(np.median(cpu[kind])) * 1e3, 2)
        row[f'{kind}_answered'] = f'{answered[kind]}/{sent_total[kind]}'
    row['clipseg_over_echo'] = round(row['clipseg_cpu_ms_per_frame'] /
                                     row['echo_cpu_ms_per_frame'], 2)
    row['least_extra_ms'] = round(
        least_extra_work(model, first_scene, masks, with_depth) * 1e3, 2)
    row['least_over_echo'] = round(1.0 + row['least_extra_ms'] / row['echo_cpu_ms_per_frame'],
                                   2)
    print(f"{size[0]}x{size[1]}, {masks} masks, {'with' if with_depth else 'no'} depth, "
          f"every output ({', '.join(row['outputs'])}): clipseg node "
          f"{row['clipseg_cpu_ms_per_frame']} ms CPU a frame ({row['clipseg_answered']} "
          f"answered), echo {row['echo_cpu_ms_per_frame']} ms ({row['echo_answered']}): "
          f"{row['clipseg_over_echo']:.2f}x; the least any node adds to the echo "
          f"{row['least_extra_ms']} ms (echo + it: {row['least_over_echo']:.2f}x)", flush=True)
    return row


def _wait_for_subscriber(publisher, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if publisher.get_subscription_count():
            return True
        time.sleep(0.05)
    return False


if __name__ == '__main__':
    sys.exit(main())
