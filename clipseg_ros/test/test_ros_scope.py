"""ros_scope.touches_ros: which modules a second ROS distro runs again (conftest.py)."""

from pathlib import Path

import pytest
from ros_scope import is_ros_module, runs_on_every_distro, TEST_DIR, touches_ros


@pytest.mark.parametrize('name, ros', [
    ('rclpy.qos', True), ('sensor_msgs.msg', True), ('clipseg_ros_interfaces.srv', True),
    ('launch_ros.actions', True), ('numpy', False), ('clipseg_ros.core.engine', False),
    ('torch', False)])
def test_ros_modules_are_named_by_their_top_level_package(name, ros):
    assert is_ros_module(name) is ros


def test_a_module_touches_ros_through_what_it_imports_or_starts(tmp_path):
    assert touches_ros(TEST_DIR / 'test_node.py')             # imports rclpy itself
    assert touches_ros(TEST_DIR / 'test_model_loading.py')    # through node_harness
    assert touches_ros(TEST_DIR / 'test_benchmarks.py')       # starts bench/transport_bench.py
    assert not touches_ros(TEST_DIR / 'test_tracks.py')       # core and numpy only
    assert not touches_ros(TEST_DIR / 'test_engine.py')       # the core is ROS-free
    helper = TEST_DIR / 'ros_scope.py'
    assert not touches_ros(helper)
    started = tmp_path / 'starts_a_script.py'
    started.write_text("import subprocess\nsubprocess.run(['python', 'fuzz_node.py'])\n")
    assert touches_ros(Path(started))                          # scripts/fuzz_node.py is a node


def test_a_module_that_touches_ros_may_opt_out_of_the_later_distros(tmp_path):
    assert runs_on_every_distro(TEST_DIR / 'test_node.py')
    assert not runs_on_every_distro(TEST_DIR / 'test_benchmarks.py')  # FIRST_DISTRO_ONLY
    assert not runs_on_every_distro(TEST_DIR / 'test_tracks.py')
