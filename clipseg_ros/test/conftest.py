"""Shared pytest fixtures for the clipseg_ros tests."""

import importlib.util
import os
from pathlib import Path

import pytest


TEST_SCOPES = ('all', 'ros')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CLIPSEG_TEST_SCOPE=ros: only the modules that touch ROS (a second distro's run)."""
    scope = os.environ.get('CLIPSEG_TEST_SCOPE', 'all')
    if scope not in TEST_SCOPES:
        raise pytest.UsageError(f'CLIPSEG_TEST_SCOPE must be one of {TEST_SCOPES}, not {scope!r}')
    if scope == 'all':
        return
    from ros_scope import runs_on_every_distro
    kept = [item for item in items if runs_on_every_distro(Path(str(item.fspath)))]
    dropped = [item for item in items if item not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope='session', autouse=True)
def compiled_model_cache_in_temp(tmp_path_factory: pytest.TempPathFactory):
    """Engines with the default compiled_model_cache ('auto': under $XDG_CACHE_HOME) write
    into a folder of the test session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('xdg_cache')))
        yield


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny random CLIPSeg model in save_pretrained format (built once)."""
    from clipseg_ros.tools.tiny_model import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp('tiny_clipseg'), seed=0)


# The engine tests need no ROS (they also run on GPU machines without it); the DDS fixtures
# are there whenever rclpy is, which `make setup` guarantees.
if importlib.util.find_spec('rclpy') is not None:
    from ros_fixtures import ros_context  # noqa: E402,F401
