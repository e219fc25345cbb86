"""
The clipseg_node executable: process-wide settings (allocator), then the node, spun by a
single-threaded executor until shut down.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipseg_ros.stop_signals import StopRequested, StopSignals

if TYPE_CHECKING:
    from clipseg_ros.core.engine import ClipSegEngine

# The clipseg_node executable imports this module, then calls main(): its stop signals are taken
# over here, before anything else is imported, so that the window in which a signal meets
# Python's defaults is only the interpreter's start (docs/robots.md). Imported by anything
# else (tests, benchmarks), the module changes no handler.
_STOP_AT_IMPORT = StopSignals.installed_if_executable('clipseg_node')


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
    import ctypes  # here, not at the top: see _STOP_AT_IMPORT
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES))


def main(args=None, engine_factory: 'Callable[..., ClipSegEngine] | None' = None) -> None:
    """Run the clipseg node until shut down (`engine_factory`: for benchmarks of the node).

    Every start-up error (a parameters file that is missing or not valid YAML, a bad remap or
    other argument, a node that cannot be constructed) ends the process with one FATAL line and
    exit status 1, never a traceback: launch shows that line as the reason the node died.
    SIGINT or SIGTERM, once or repeated, at any moment, stop the node (worker, model, entities)
    and end the process with exit status 0 (stop_signals.py).
    """
    global _STOP_AT_IMPORT
    stop, _STOP_AT_IMPORT = _STOP_AT_IMPORT or StopSignals(), None  # a later main(): new state
    stop.install()
    # Imported after the handlers are in place, so a signal meanwhile (importing torch alone
    # takes seconds) is recorded. The imports are not abandoned: a signal raised inside a C
    # extension's import made numpy fail to import again on the way out ("cannot load module
    # more than once per process"). A stop before the node exists has nothing to clean up.
    from clipseg_ros.core.engine import ClipSegEngine
    from clipseg_ros.node import ClipSegNode
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    if stop.requested:
        stop.ignore_from_now()
        return
    factory = engine_factory or ClipSegEngine

    def interruptible_factory(*factory_args, **factory_kwargs) -> ClipSegEngine:
        with stop.interruptible():  # a stop signal abandons model loading
            return factory(*factory_args, **factory_kwargs)

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
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:
        refuse(error)
    finally:
        if rclpy.logging.get_logger_level('rcl') == rclpy.logging.LoggingSeverity.FATAL:
            rclpy.logging.set_logger_level('rcl', rcl_level)  # unless --log-level set it
    try:
        node = ClipSegNode(engine_factory=interruptible_factory)
    except Exception as error:  # e.g. a parameter file value of the wrong type
        rclpy.try_shutdown()
        refuse(error)
    # Inference on camera frames has a thread of its own (the worker); the executor runs the
    # other callbacks. rclpy's MultiThreadedExecutor starved a pass-through node at 30 Hz
    # (docs/design.md), so this one is single-threaded.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    # A stop signal ends the executor's wait at once (no polling): see wake_on_signal.
    stop.wake_on_signal(node.create_guard_condition(lambda: None).trigger)
    try:
        if not stop.requested:
            try:
                node.autostart_if_enabled()
            except (ExternalShutdownException, StopRequested):
                raise
            except Exception as error:  # unexpected: a model that fails to load is only logged
                refuse(error)
        while not stop.requested and executor.context.ok():
            executor.spin_once()
    except (StopRequested, ExternalShutdownException):
        pass
    finally:  # a signal from here on is only recorded: nothing interrupts the shutdown
        node.destroy_node()  # stops the worker, releases the model, destroys the entities
        executor.shutdown()
        rclpy.try_shutdown()
        stop.ignore_from_now()


if __name__ == '__main__':
    main()
