"""make demo-teach: teach the installed clipseg node by a click, then watch it find the kind.

The node runs the miniature CLIPSeg installed with the package (prompt: a red circle). The
camera shows one tabletop scene; a click is published on the camera topic's `_mouse_left`
twin exactly as rqt_image_view publishes it, at the middle of a green triangle; the camera then
shows another scene. The picture (docs/teaching_demo.jpg by default) puts the node's overlays
side by side: the clicked scene after the click (the cross marks the click) and the other one.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from geometry_msgs.msg import PointStamped

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core.teach_region import middle_pixel
from clipseg_ros.tools.drive import (
    CameraStream, rgb_image_msg, start_node_process, stop_node_process,
    use_large_image_profile, wait_for_subscription)
from clipseg_ros.tools.scenes import phrase, render_scene

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
KNOWN = ('circle', 'red')      # the prompt in force before the click
TAUGHT = ('triangle', 'green')  # the kind clicked
CAMERA = '/demo_camera/image_raw'


def overlay_after(stream: CameraStream, rgb: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Send a frame (again until answered); the node's overlay and labels for it."""
    for _ in range(20):
        key = stream.publish(rgb_image_msg(rgb))
        outputs = stream.wait_outputs(key, names=('overlay', 'segmentation'), timeout=30.0)
        if outputs is not None:
            return image_to_array(outputs['overlay']), list(outputs['segmentation'].labels)
    raise RuntimeError('the node answered no frame')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('demo_output'))
    parser.add_argument('--picture', type=Path, default=Path('docs/teaching_demo.jpg'))
    args = parser.parse_args()
    use_large_image_profile()
    args.out.mkdir(parents=True, exist_ok=True)
    clicked = render_scene(11, 640, 480, num_objects=3, include=[KNOWN, TAUGHT],
                           colours=('yellow', 'blue'))
    other = render_scene(23, 640, 480, num_objects=4, include=[KNOWN, TAUGHT],
                         colours=('yellow', 'blue'))
    params = {'model': MINI_MODEL, 'resolution': '0', 'qos_reliability': 'reliable',
              'prompts': f'["{phrase(KNOWN)}"]'}
    log_path = args.out / 'teach_node.log'
    process = start_node_process(params, CAMERA, log_path, namespace='/demo')
    rclpy.init()
    node = rclpy.create_node('clipseg_teach_demo')
    stream = CameraStream(node, CAMERA, output_namespace='/demo', keep_outputs=True)
    clicks = node.create_publisher(PointStamped, CAMERA + '_mouse_left', 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if not (stream.wait_for_subscriber(timeout=120.0)
                and wait_for_subscription(clicks, 30.0)):
            print(f'demo-teach: the node did not come up; see {log_path}', file=sys.stderr)
            return 1
        _, before = overlay_after(stream, clicked.rgb)
        column, row = middle_pixel(clicked.mask_of(*TAUGHT))
        click = PointStamped()  # as rqt_image_view: pixel column and row, z 0
        click.header.stamp = node.get_clock().now().to_msg()
        click.point.x, click.point.y = float(column), float(row)
        clicks.publish(click)
        deadline, labels = time.monotonic() + 60.0, before
        while time.monotonic() < deadline and len(labels) == len(before):
            first, labels = overlay_after(stream, clicked.rgb)
        second, _ = overlay_after(stream, other.rgb)
    finally:
        executor.shutdown()
        stop_node_process(process)
        node.destroy_node()
        rclpy.try_shutdown()
    taught = [line for line in log_path.read_text().splitlines() if "taught '" in line]
    if len(labels) == len(before) or not taught:
        print(f'demo-teach: the click taught nothing; see {log_path}', file=sys.stderr)
        return 1
    first = first.copy()
    cv2.drawMarker(first, (column, row), (255, 255, 255), cv2.MARKER_CROSS, 24, 3)
    cv2.drawMarker(first, (column, row), (0, 0, 0), cv2.MARKER_CROSS, 24, 1)
    picture = np.concatenate([first, np.full((480, 8, 3), 255, np.uint8), second], axis=1)
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.picture), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f'demo-teach: {taught[-1].split("]: ", 1)[-1]}')
    print(f'demo-teach: prompts before the click {before}, after {labels}')
    print(f'demo-teach: saved {args.picture} (left: the clicked scene, right: another scene)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
