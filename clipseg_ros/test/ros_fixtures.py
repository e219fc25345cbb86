"""ROS fixtures shared by the tests that talk over DDS (imported by conftest.py)."""

import os

import pytest
import rclpy

from clipseg_ros import launch_args

# A domain of our own per test run, so two runs on one machine (a developer's and CI's) never
# see each other's nodes.  Subprocess nodes inherit it through the environment.
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# This process is the camera of the subprocess tests: a best-effort 640x480 frame leaves it
# whole only with the shipped profile (measured: 3 or 4 of 15 arrived without it, all with it),
# as README advises for camera drivers.  Set before any participant exists, so all use it.
os.environ.setdefault(launch_args.PROFILE_ENV, launch_args.fastdds_profile_file())


@pytest.fixture
def ros_context():
    """Yield an initialised rclpy context of its own, shut down after the test."""
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)
