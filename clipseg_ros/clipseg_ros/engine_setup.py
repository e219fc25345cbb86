"""
What the node hands the engine besides its parameters: int8's calibration set, and the core's
log lines (which use Python's logging) forwarded to the node's logger while the engine loads.
"""

from collections.abc import Iterator
import contextlib
import logging
from typing import Any

CORE_LOGGER = 'clipseg_ros.core'


def int8_calibration(dtype: str, folder: str) -> Any:
    """For dtype int8, the ``int8_calibration`` folder, or the package's synthetic scenes
    when it is empty; None for the other dtypes (they take no calibration)."""
    if dtype.strip().lower() != 'int8':
        return None
    if folder.strip():
        return folder.strip()
    # Only int8 with the default set renders scenes at run time (when it quantizes).
    from clipseg_ros.tools.calibration_scenes import synthetic_calibration_set
    return synthetic_calibration_set()


class _ToRosLogger(logging.Handler):
    def __init__(self, ros_logger: Any) -> None:
        super().__init__(logging.INFO)
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                self._ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros_logger.warning(text)
            else:
                self._ros_logger.info(text)
        except Exception:  # a log line must never fail the configure that wrote it
            self.handleError(record)


@contextlib.contextmanager
def forward_core_logs(ros_logger: Any) -> Iterator[None]:
    """Within the block, the core's INFO and higher records go to ``ros_logger`` (and not
    to Python's last-resort stderr handler)."""
    logger = logging.getLogger(CORE_LOGGER)
    handler = _ToRosLogger(ros_logger)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
