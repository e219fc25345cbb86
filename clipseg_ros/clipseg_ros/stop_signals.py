"""
SIGINT and SIGTERM as a request to stop, answered by one clean shutdown however many come.

rclpy's own handlers shut the context down and then let Python raise KeyboardInterrupt at
whatever line runs; Ctrl-C under launch delivers SIGINT twice (the terminal's process group, and
launch forwarding it), so the second one used to land inside the clean-up and end the process
with a traceback and exit status -2. Here a signal only records the request; the executable's
loop, woken at once (wake_on_signal), runs the shutdown, which no later signal interrupts. The one
exception is model loading, which can take long enough that launch escalates to SIGKILL: inside
``interruptible()`` (entered around the engine's construction) the first signal raises
StopRequested, which the executable catches like any other stop. Standard library only.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
import os
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How soon a stop that came during an import inside interruptible() is tried again.
IMPORT_RETRY_S = 0.05


class StopRequested(BaseException):
    """A stop signal abandoned model loading; a BaseException, so no `except Exception` eats it."""


class StopSignals:
    """
    Handlers for SIGINT and SIGTERM that record the first signal and never raise outside
    ``interruptible()``; repeats are ignored.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal's number
        self._interruptible = False

    @property
    def requested(self) -> bool:
        return self.received is not None

    @classmethod
    def installed_if_executable(cls, name: str) -> 'StopSignals | None':
        """Installed handlers when this process is the executable ``name``, else None."""
        if os.path.basename(sys.argv[0] if sys.argv else '') != name or \
                threading.current_thread() is not threading.main_thread():
            return None
        stop = cls()
        stop.install()
        return stop

    def install(self) -> None:
        """Take SIGINT and SIGTERM over (main thread only, as Python requires)."""
        for number in STOP_SIGNALS:
            signal.signal(number, self._on_signal)

    def wake_on_signal(self, wake: Callable[[], None]) -> None:
        """
        Call ``wake`` from a thread of its own when a signal arrives (main thread only).

        Python runs a handler only once the main thread is back in Python code, which an
        executor blocked in rcl_wait is not; the C-level handler writes the signal's number to a
        pipe at once, and ``wake`` (a guard condition's trigger) ends that wait. So the
        executor waits without a timeout, and an idle node costs no periodic wake-ups.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

        def relay() -> None:
            while os.read(read_fd, 64):
                try:
                    wake()
                except Exception:  # noqa: B902 - the entity is gone: the shutdown has begun
                    return

        threading.Thread(target=relay, name='stop_signal_relay', daemon=True).start()

    def ignore_from_now(self) -> None:
        """Ignore both signals for the rest of the process (after the shutdown finished)."""
        self._interruptible = False
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)

    def _on_signal(self, number: int, frame) -> None:
        if self.received is None:
            self.received = number
        self._raise_if_interruptible(frame)

    def _raise_if_interruptible(self, frame) -> None:
        if not self._interruptible:
            return
        if _inside_import(frame):
            # Raised inside a module's import (a C extension's, above all), the exception can
            # leave the module half made and unimportable, and the exit then fails with an
            # ImportError (seen with numpy). Try again once the import is done.
            signal.setitimer(signal.ITIMER_REAL, IMPORT_RETRY_S)
            return
        self._interruptible = False  # raised once; the shutdown that follows is not cut
        raise StopRequested(signal.Signals(self.received).name)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """
        Let a stop signal abandon the block by raising StopRequested (also at entry, when one
        came before). Only the main thread runs signal handlers, so elsewhere it does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        if self.requested:
            raise StopRequested(signal.Signals(self.received).name)
        self._interruptible = True
        retry = signal.signal(signal.SIGALRM, lambda number, frame:
                              self._raise_if_interruptible(frame))
        try:
            yield
        finally:
            self._interruptible = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, retry)


def _inside_import(frame) -> bool:
    """Whether ``frame`` runs inside an import statement (importlib's frames are below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith('<frozen importlib'):
            return True
        frame = frame.f_back
    return False
