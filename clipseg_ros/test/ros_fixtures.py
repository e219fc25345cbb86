"""ROS fixtures shared by the tests that talk over DDS (imported by conftest.py)."""

import os

import pytest
import rclpy

# A domain of our own per test run, so two runs on one machine (a developer's and CI's) never
# see each other's nodes.  Subprocess nodes inherit it through the environment.
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


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
