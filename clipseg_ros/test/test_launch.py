"""launch_testing test of clipseg.launch.py, for machines with a full ROS 2 install.

Run there with `launch_test clipseg_ros/test/test_launch.py` or `colcon test` / pytest (the
launch_testing pytest plugin collects it).  Where `launch`, `launch_ros` and `launch_testing` are
not installed (they are not on PyPI), the module is skipped with that reason; the subprocess test
(test_subprocess_node.py) covers the same command line there.
"""

import os
import tempfile
import threading
import time
import unittest

import pytest

launch_testing = pytest.importorskip(
    'launch_testing',
    reason='launch_testing is not installed: it comes with ROS 2 from apt, not from PyPI; '
           'test_subprocess_node.py runs the same node command line instead')
launch = pytest.importorskip('launch', reason='ROS 2 launch is not installed')
pytest.importorskip('launch_ros', reason='ROS 2 launch_ros is not installed')

import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from clipseg_ros_interfaces.msg import Segmentation  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from clipseg_ros.tiny_model import write_tiny_model  # noqa: E402

MODEL_DIR = os.path.join(tempfile.mkdtemp(prefix='clipseg_launch_test_'), 'model')


@pytest.mark.launch_test
def generate_test_description():
    write_tiny_model(MODEL_DIR)
    clipseg_launch = os.path.join(
        get_package_share_directory('clipseg_ros'), 'launch', 'clipseg.launch.py')
    return launch.LaunchDescription([
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(clipseg_launch),
            launch_arguments={'namespace': 'launch_test', 'image': '/launch_test_camera/image',
                              'model': MODEL_DIR, 'device': 'cpu'}.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestClipsegLaunch(unittest.TestCase):
    """The launched node answers a camera frame with outputs stamped like it."""

    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node('clipseg_launch_tester')

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_frame_in_outputs_out(self):
        received = {}
        done = threading.Event()

        def collect(name):
            def callback(msg):
                received[name] = msg
                if {'mask', 'segmentation'} <= set(received):
                    done.set()
            return callback

        self.node.create_subscription(Image, '/launch_test/mask', collect('mask'), 10)
        self.node.create_subscription(Segmentation, '/launch_test/segmentation',
                                      collect('segmentation'), 10)
        publisher = self.node.create_publisher(Image, '/launch_test_camera/image', 10)
        frame = Image(width=32, height=24, encoding='rgb8', step=96)
        frame.data = bytes(32 * 24 * 3)
        frame.header.frame_id = 'launch_test_optical'
        deadline = time.monotonic() + 60.0
        while not done.is_set() and time.monotonic() < deadline:
            publisher.publish(frame)
            rclpy.spin_once(self.node, timeout_sec=0.2)
        self.assertTrue(done.is_set(), 'no output from the launched node')
        self.assertEqual(received['mask'].header.frame_id, 'launch_test_optical')
        self.assertEqual((received['mask'].width, received['mask'].height), (32, 24))
        self.assertEqual(list(received['segmentation'].labels), ['object'])


@launch_testing.post_shutdown_test()
class TestClipsegShutdown(unittest.TestCase):
    """The node exits cleanly when launch shuts it down."""

    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
