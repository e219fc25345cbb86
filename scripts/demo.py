"""make demo: run the installed clipseg node on a synthetic 30 Hz camera and save what it sends.

Uses the real CLIPSeg weights when they can be loaded (hub id or local folder, `--model` or
$CLIPSEG_MODEL) on a moving synthetic frame. Otherwise it says so and uses the miniature CLIPSeg
installed with the package, trained on synthetic tabletop scenes: the camera then shows such
scenes, the prompts name objects on the table, and the overlays show them found and labelled.
"""

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.model_loading import DEFAULT_MODEL, ModelLoadError
from clipseg_ros.tools.drive import (
    CameraStream, percentile_ms, rgb_image_msg, start_node_process, stop_node_process,
    synthetic_frame, use_large_image_profile)
from clipseg_ros.tools.scenes import phrase, render_scene

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
# Named on the demo's table (the miniature model knows shapes and colours only).
MINI_PROMPTS = [phrase(('circle', 'red')), phrase(('square', 'blue'))]


def hub_reachable(model: str) -> bool:
    """False when `model` is a hub id and the hub's host does not resolve (offline machine)."""
    if Path(model).exists() or os.environ.get('HF_HUB_OFFLINE', '0') not in ('', '0'):
        return True  # a folder, or the user asked for the local cache only
    from urllib.parse import urlparse

    from huggingface_hub import constants
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def choose_model(requested: str) -> tuple[str, bool]:
    """The model to run and whether it is the miniature fallback."""
    try:
        if not hub_reachable(requested):
            # An offline hub client retries for half a minute before giving up: don't ask it.
            raise ModelLoadError(f"the hub is unreachable and '{requested}' is not a local "
                                 'folder (pass --model DIR or set CLIPSEG_MODEL)')
        # torch: loading is what is checked; the node converts for OpenVINO itself.
        ClipSegEngine(model=requested, device='cpu', backend='torch').release()
        print(f'demo: using model {requested}')
        return requested, False
    except (ModelLoadError, ValueError, OSError) as error:
        print(f'demo: real weights unavailable ({str(error).splitlines()[0]})')
        print(f'demo: using the miniature CLIPSeg trained on synthetic tabletop scenes '
              f'({MINI_MODEL}): it knows coloured shapes on a table, nothing else')
        return MINI_MODEL, True


def tabletop_frames(width: int, height: int, count: int = 6) -> list:
    """
    Scenes holding the objects MINI_PROMPTS name, among green and yellow ones (the miniature
    model confuses shapes of one colour: its MODEL_CARD.md has the numbers).
    """
    return [rgb_image_msg(render_scene(seed, width, height, num_objects=4,
                                       include=[('circle', 'red'), ('square', 'blue')],
                                       colours=('green', 'yellow')).rgb)
            for seed in range(count)]


def save_outputs(records, out_dir: Path, limit: int) -> int:
    answered = [r for r in records if {'mask', 'confidence', 'overlay'} <= set(r.outputs)]
    step = max(1, len(answered) // limit)
    saved = 0
    for index, record in enumerate(answered[::step][:limit]):
        labels = image_to_array(record.outputs['mask'])
        confidence = image_to_array(record.outputs['confidence'])
        overlay = image_to_array(record.outputs['overlay'])
        cv2.imwrite(str(out_dir / f'frame_{index:03d}_mask.png'), labels)
        # Labels are small integers: a stretched copy is what a person can look at.
        visible = (labels.astype(np.uint16) * 255 // max(1, int(labels.max()))).astype(np.uint8)
        cv2.imwrite(str(out_dir / f'frame_{index:03d}_mask_visible.png'), visible)
        cv2.imwrite(str(out_dir / f'frame_{index:03d}_confidence.png'),
                    np.round(confidence * 255).astype(np.uint8))
        cv2.imwrite(str(out_dir / f'frame_{index:03d}_overlay.png'),
                    cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        saved += 1
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', default=os.environ.get('CLIPSEG_MODEL', DEFAULT_MODEL))
    parser.add_argument('--prompt', action='append', help='text prompt (repeatable)')
    parser.add_argument('--seconds', type=float, default=8.0)
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--out', type=Path, default=Path('demo_output'))
    parser.add_argument('--save', type=int, default=8, help='frames to save')
    args = parser.parse_args()
    use_large_image_profile()
    args.out.mkdir(parents=True, exist_ok=True)
    model, miniature = choose_model(args.model)
    prompts = args.prompt or (MINI_PROMPTS if miniature else ['a red ball'])

    params = {'model': model, 'prompts': '[' + ','.join(f'"{p}"' for p in prompts) + ']'}
    process = start_node_process(params, '/demo_camera/image_raw', args.out / 'node.log',
                                 namespace='/demo')
    rclpy.init()
    node = rclpy.create_node('clipseg_demo_camera')
    stream = CameraStream(node, '/demo_camera/image_raw', output_namespace='/demo',
                          keep_outputs=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if not stream.wait_for_subscriber(timeout=120.0):
            print(f'demo: the node did not come up; see {args.out / "node.log"}', file=sys.stderr)
            return 1
        if miniature:
            frames = tabletop_frames(args.width, args.height)
        else:
            frames = [rgb_image_msg(synthetic_frame(args.width, args.height, i))
                      for i in range(60)]
        sent = stream.run(frames, args.rate, args.seconds)
        time.sleep(3.0)  # let the frame in progress finish
    finally:
        executor.shutdown()
        stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
    answered = stream.answered('segmentation')
    latencies = stream.latencies('segmentation')
    inference = np.array([r.inference_s for r in answered if r.inference_s is not None])
    saved = save_outputs(list(stream.records.values()), args.out, args.save)
    if not answered:
        print(f'demo: published {sent} frames and received no output; see {args.out}/node.log')
        return 1
    print(f'demo: saved mask, confidence and overlay PNGs of {saved} frames to {args.out}/')
    # What ran, as the node logged it at configure (back end, precision, CPU features).
    runtime = [line.split('runtime: ', 1)[1].strip()
               for line in (args.out / 'node.log').read_text().splitlines() if 'runtime: ' in line]
    print(f"demo: the node ran {runtime[-1] if runtime else 'an unknown runtime (see node.log)'}")
    print(f'demo: {args.width}x{args.height} at {args.rate:.0f} Hz for {args.seconds:.0f} s, '
          f'prompts {prompts}: published {sent}, processed {len(answered)}, '
          f'dropped {sent - len(answered)}, latency mean {latencies.mean() * 1e3:.0f} ms, '
          f'p50 {percentile_ms(latencies, 50):.0f} ms, p99 {percentile_ms(latencies, 99):.0f} ms, '
          f'inference mean {inference.mean() * 1e3:.0f} ms')
    return 0 if answered and saved else 1


if __name__ == '__main__':
    sys.exit(main())
