"""
The clipseg_node executable: process-wide settings (allocator), then the node, spun by a
single-threaded executor until shut down.
"""

import ctypes
import ctypes.util
from collections.abc import Callable

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.node import ClipSegNode
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


# Image-sized buffers are allocated and freed for every frame. With glibc's defaults the freed
# memory goes back to the kernel and is faulted in again on the next frame (docs/design.md);
# the same advice as ROS 2's real-time guidance. RSS then stays at its high-water mark.
MALLOC_MMAP_THRESHOLD_BYTES = 64 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 256 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve image buffers from the heap and keep what is freed there.

    Call once at process start (clipseg_node's main does). Returns False where the C library
    has no mallopt (not glibc), changing nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES))


def main(args=None, engine_factory: Callable[..., ClipSegEngine] = ClipSegEngine) -> None:
    """Run the clipseg node until shut down (`engine_factory`: for benchmarks of the node).

    Every start-up error (a parameters file that is missing or not valid YAML, a bad remap or
    other argument, a node that cannot be constructed) ends the process with one FATAL line and
    exit status 1, never a traceback: launch shows that line as the reason the node died.
    """
    keep_freed_memory()
    logger = rclpy.logging.get_logger('clipseg')

    def refuse(error: BaseException) -> None:
        # rcl's messages carry newlines and ', at file.c:line' trails meant for its developers.
        text = str(error).split(', at /')[0].removeprefix('failed to initialize rcl: ')
        if type(error).__name__ == 'UnknownROSArgsError':
            text = f'unknown ROS arguments {text}'
        logger.fatal('cannot start: ' + (' '.join(text.split()) or type(error).__name__))
        raise SystemExit(1)

    # rcl logs an ERROR line of its own before a bad argument makes init raise; the exception
    # says the same with the detail, so rcl stays quiet while it parses the command line.
    rcl_level = rclpy.logging.get_logger_level('rcl')
    rclpy.logging.set_logger_level('rcl', rclpy.logging.LoggingSeverity.FATAL)
    try:
        rclpy.init(args=args)
    except Exception as error:
        refuse(error)
    finally:
        if rclpy.logging.get_logger_level('rcl') == rclpy.logging.LoggingSeverity.FATAL:
            rclpy.logging.set_logger_level('rcl', rcl_level)  # unless --log-level set it
    try:
        node = ClipSegNode(engine_factory=engine_factory)
    except KeyboardInterrupt:  # stopped while the model was loading
        rclpy.try_shutdown()
        return
    except Exception as error:  # e.g. a parameter file value of the wrong type
        rclpy.try_shutdown()
        refuse(error)
    # Inference on camera frames has a thread of its own (the worker); the executor runs the
    # other callbacks. rclpy's MultiThreadedExecutor starved a pass-through node at 30 Hz
    # (docs/design.md), so this one is single-threaded.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        try:
            node.autostart_if_enabled()
        except ExternalShutdownException:
            raise
        except Exception as error:  # unexpected: a model that fails to load is only logged
            refuse(error)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
