"""Fixtures for the clipseg_ros tests."""

from ros_fixtures import ros_context  # noqa: F401  (fixture re-exported for every test module)
