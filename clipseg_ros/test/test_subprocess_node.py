"""The installed clipseg_node started the way launch starts it, driven from a test node.

`ros2 launch clipseg_ros clipseg.launch.py namespace:=robot image:=/test_camera/image_raw`
runs `lib/clipseg_ros/clipseg_node --ros-args -r __node:=clipseg -r __ns:=/robot
--params-file share/clipseg_ros/config/clipseg.yaml -r image:=/test_camera/image_raw`;
this test runs exactly that command line (plus a model override, as the launch argument does).
"""

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from clipseg_ros_interfaces.srv import SetTextPrompts
from rclpy.executors import SingleThreadedExecutor

from clipseg_ros.conversions import image_to_array
from node_harness import (CameraAndCollector, call_service, encode_frame,
                          publish_until_answered, rgb_frame)


def installed_executable() -> Path:
    return Path(get_package_prefix('clipseg_ros')) / 'lib' / 'clipseg_ros' / 'clipseg_node'


def installed_params_file() -> Path:
    return Path(get_package_share_directory('clipseg_ros')) / 'config' / 'clipseg.yaml'


@pytest.fixture
def node_process(tiny_model_dir, tmp_path):
    log_path = tmp_path / 'clipseg_node.log'
    command = [
        str(installed_executable()), '--ros-args',
        '-r', '__node:=clipseg', '-r', '__ns:=/robot',
        '--params-file', str(installed_params_file()),
        '-p', f'model:={tiny_model_dir}', '-p', 'device:=cpu', '-p', 'resolution:=64',
        '-r', 'image:=/test_camera/image_raw',
    ]
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ))
    yield process, log_path
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_installed_files_are_where_launch_looks():
    assert installed_executable().is_file() and os.access(installed_executable(), os.X_OK)
    assert installed_params_file().is_file()
    share = Path(get_package_share_directory('clipseg_ros'))
    assert (share / 'launch' / 'clipseg.launch.py').is_file()
    assert (share / 'launch' / 'example_camera.launch.py').is_file()


def test_installed_node_with_params_file_and_remap(ros_context, node_process):
    process, log_path = node_process
    camera = CameraAndCollector(ros_context, namespace='/robot',
                                image_topic='/test_camera/image_raw')
    client = camera.node.create_client(SetTextPrompts, '/robot/clipseg/set_text_prompts')
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(camera.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert camera.wait_for_subscriber(timeout=60.0), log_path.read_text()
        frame = encode_frame(rgb_frame(120, 90), 'bgr8')
        outputs = publish_until_answered(camera, frame, frame_id='test_camera_optical')
        assert outputs is not None, log_path.read_text()
        assert outputs['mask'].header.frame_id == 'test_camera_optical'
        assert image_to_array(outputs['mask']).shape == (90, 120)
        assert outputs['segmentation'].labels == ['object']  # the YAML's initial prompt
        response = call_service(camera.node, client, SetTextPrompts.Request(prompts=['cup']))
        assert response.success, response.message
        outputs = publish_until_answered(camera, frame)
        assert outputs['segmentation'].labels == ['cup']
        assert outputs['segmentation'].prompt_version == response.prompt_version
        assert process.poll() is None, 'node exited'
    finally:
        executor.shutdown()
        spinner.join(timeout=5)
        camera.node.destroy_node()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0, log_path.read_text()
