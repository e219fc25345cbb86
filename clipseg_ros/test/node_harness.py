"""A test-side ROS node that feeds camera frames to clipseg and collects what it publishes."""

import array
import os
import threading
import time

from clipseg_ros.node import ClipSegNode
from clipseg_ros.tools.drive import CameraStream, service_response
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
import numpy as np
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import Image
from synthetic_frames import rgb_frame  # noqa: F401  (the node tests take it from here)


def encode_frame(rgb: np.ndarray, encoding: str) -> Image:
    """Pack an RGB array as a sensor_msgs/Image in the requested encoding."""
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding == 'bgr8':
        pixels = rgb[:, :, ::-1]
    elif encoding == 'rgba8':
        pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    elif encoding == 'bgra8':
        pixels = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)])
    elif encoding == 'mono8':
        pixels = rgb[:, :, 0]
    else:
        raise ValueError(encoding)
    pixels = np.ascontiguousarray(pixels)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                step=pixels.strides[0])
    msg.data = array.array('B', pixels.tobytes())  # one copy; a bytes object is checked per item
    return msg


class CameraAndCollector(CameraStream):
    """A camera node of its own that publishes frames and keeps the clipseg outputs."""

    def __init__(self, context, namespace: str = '', image_topic: str = 'image',
                 compressed: bool = False,
                 camera_reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE):
        node = rclpy.create_node('camera_and_collector', context=context, namespace=namespace)
        super().__init__(node, image_topic, keep_outputs=True, compressed=compressed,
                         reliability=camera_reliability, listen_to_diagnostics=True)


def publish_until_answered(camera: 'CameraAndCollector', msg, frame_id: str = 'camera_optical',
                           timeout: float = 60.0, retry_period: float = 1.0):
    """Publish msg (fresh stamp each time) until the outputs of one copy arrive.

    A best-effort subscriber in another process may match our publisher a moment after we see
    it, and a sample sent in between is lost by design; resending covers that.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        key = camera.publish(msg, frame_id=frame_id)
        outputs = camera.wait_outputs(key, timeout=min(retry_period,
                                                       deadline - time.monotonic()))
        if outputs is not None:
            return outputs
    return None


def call_service(node, client, request, timeout: float = 30.0):
    """Call a service from a node spun elsewhere; return the response or raise TimeoutError."""
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f'service {client.srv_name} not available')
    response = service_response(client, request, timeout)
    if response is None:
        raise TimeoutError(f'service {client.srv_name} did not answer')
    return response


# The back end the node tests run on (`make test` runs the engine-heavy ones on each).
TEST_BACKEND = os.environ.get('CLIPSEG_TEST_BACKEND', 'torch')


def tiny_model_overrides(model_dir, **extra) -> list[Parameter]:
    """Parameter overrides that run the node on the tiny test model."""
    values = {'model': str(model_dir), 'device': 'cpu', 'prompts': ['a red square', 'sky'],
              'resolution': 64, 'diagnostics_period': 0.2, 'backend': TEST_BACKEND}
    values.update(extra)
    return [Parameter(name, value=value) for name, value in values.items()]


class BackgroundSpin:
    """Spins an executor on a thread until stop(), which ends the loop before shutting it down.

    Shutting an executor down while executor.spin() runs a callback lets the spin thread raise
    from a destroyed guard condition (seen in CI); stopping the loop first avoids that race.
    """

    def __init__(self, executor):
        self.executor = executor
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=10.0)
        self.executor.shutdown()


class RunningNode:
    """A clipseg node, a camera/collector node and a spinning executor, torn down together."""

    def __init__(self, context, model_dir, autostart=True, compressed=False, **overrides):
        if compressed:
            overrides['input_transport'] = 'compressed'
        self.node = ClipSegNode(context=context,
                                parameter_overrides=tiny_model_overrides(model_dir, **overrides))
        self.camera = CameraAndCollector(context, compressed=compressed)
        self.client_node = self.camera.node
        # The executor clipseg_node's main() uses.
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.camera.node)
        if autostart:
            assert self.node.autostart_if_enabled()
        self.spin = BackgroundSpin(self.executor)
        self.clients = {
            'text': self.client_node.create_client(SetTextPrompts, '/clipseg/set_text_prompts'),
            'image': self.client_node.create_client(SetImagePrompt, '/clipseg/set_image_prompt'),
            'segment': self.client_node.create_client(Segment, '/clipseg/segment'),
            'params': self.client_node.create_client(SetParameters, '/clipseg/set_parameters'),
        }

    def call(self, which, request):
        return call_service(self.client_node, self.clients[which], request)

    def set_parameter(self, name, value):
        parameter = Parameter(name, value=value).to_parameter_msg()
        request = SetParameters.Request(parameters=[parameter])
        return self.call('params', request).results[0]

    def send_and_wait(self, msg, **kwargs):
        assert self.camera.wait_for_subscriber()
        key = self.camera.publish(msg)
        outputs = self.camera.wait_outputs(key, **kwargs)
        assert outputs is not None, 'no output for the frame'
        return outputs

    def close(self):
        self.spin.stop()
        self.node.destroy_node()
        self.camera.node.destroy_node()
