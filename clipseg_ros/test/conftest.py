"""Shared pytest fixtures for the clipseg_ros tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random CLIPSeg model in save_pretrained format (built once)."""
    from clipseg_ros.tiny_model import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp('tiny_clipseg'), seed=0)


from ros_fixtures import ros_context  # noqa: E402,F401  (the DDS fixtures live there)
