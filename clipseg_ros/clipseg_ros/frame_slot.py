"""
The newest camera frame and the worker thread that processes it, free of rclpy.

A camera faster than the model replaces the pending frame (counted as dropped) instead of
building a queue; the worker sleeps on a condition variable between frames, honours a maximum
rate, and stops (joined) on deactivate, so no frame is processed afterwards.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
import math
import threading
import time
from typing import Any


class RecentTimes:
    """Times of recent events, appended by one thread while another reads the rate."""

    def __init__(self, capacity: int = 300) -> None:
        self._times: deque = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def append(self, when: float) -> None:
        with self._lock:
            self._times.append(when)

    def rate(self, now: float, window: float = 5.0) -> float:
        """Events per second over the last ``window`` seconds (0 with fewer than two)."""
        with self._lock:
            recent = [t for t in self._times if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


@dataclass
class FrameCounters:
    """What happened to camera frames; read by diagnostics and tests."""

    received: int = 0
    processed: int = 0
    dropped: int = 0      # replaced by a newer frame before the worker took it
    rejected: int = 0     # malformed input
    failed: int = 0       # inference raised
    consecutive_failures: int = 0
    last_latency_s: float = 0.0
    last_inference_s: float = 0.0
    last_error: str = ''
    # Recent monotonic times, for the rates in diagnostics.
    receive_times: RecentTimes = field(default_factory=RecentTimes)
    process_times: RecentTimes = field(default_factory=RecentTimes)

    def count_failure(self, error: BaseException) -> str:
        """Count one failed frame; return its description."""
        self.failed += 1
        self.consecutive_failures += 1
        self.last_error = f'{type(error).__name__}: {error}'
        return self.last_error

    def count_processed(self, received_at: float, inference_s: float) -> None:
        done = time.monotonic()
        self.processed += 1
        self.last_latency_s = done - received_at
        self.last_inference_s = inference_s
        self.process_times.append(done)
        self.consecutive_failures = 0

    def forget_failures(self) -> None:
        """Start failure reporting afresh (a new configure), keeping the lifetime totals."""
        self.consecutive_failures = 0
        self.last_error = ''


class LatestFrameWorker:
    """
    Keeps the newest frame and hands it to ``process(frame, received_at)`` on a worker thread.

    ``min_interval()`` gives the seconds to keep between two processed frames (0: none);
    ``on_error(error)`` gets whatever ``process`` raises, and the worker goes on.
    """

    def __init__(self, process: Callable[[Any, float], None],
                 on_error: Callable[[Exception], None],
                 min_interval: Callable[[], float]) -> None:
        self._process = process
        self._on_error = on_error
        self._min_interval = min_interval
        self.counters = FrameCounters()
        self._ready = threading.Condition()
        # Held while a frame is processed, so a cleanup never frees what the worker uses.
        self.processing = threading.Lock()
        self._pending: tuple[Any, float] | None = None
        self._latest: Any = None
        self._active = False
        self._thread: threading.Thread | None = None
        self._last_start = -math.inf  # no frame yet: the first is never rate-limited

    active = property(lambda self: self._active, doc='Whether the worker is running.')
    latest = property(lambda self: self._latest,
                      doc='The newest frame offered (processed or not), or None.')

    def offer(self, frame: Any, received_at: float) -> None:
        """Keep ``frame`` as the newest; while active, it replaces the pending one."""
        with self._ready:
            self._latest = frame
            if not self._active:
                return  # kept as the latest frame only: not processed, not counted as dropped
            if self._pending is not None:
                self.counters.dropped += 1
            self._pending = (frame, received_at)
            self._ready.notify()

    def start(self) -> None:
        with self._ready:
            self._pending = None  # a frame from before activation is stale
            self._active = True
        self._thread = threading.Thread(target=self._run, name='clipseg_worker', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the frame in progress (joined); drop the pending frame."""
        with self._ready:
            self._active = False
            self._pending = None
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def clear(self) -> None:
        """Forget the pending and the latest frame."""
        with self._ready:
            self._pending = None
            self._latest = None

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._pending is not None or not self._active)
                if not self._active:
                    return
            with self.processing:
                try:
                    pending = self._take_when_due()
                    if pending is not None:
                        self._process(*pending)
                except Exception as error:  # the worker must outlive any one frame
                    self._on_error(error)

    def _take_when_due(self) -> tuple[Any, float] | None:
        interval = self._min_interval()
        if interval > 0.0:
            wait = self._last_start + interval - time.monotonic()
            if wait > 0.0:  # a newer frame may arrive meanwhile; stop() ends the wait
                with self._ready:
                    self._ready.wait_for(lambda: not self._active, timeout=wait)
        with self._ready:
            pending, self._pending = self._pending, None
            if pending is None or not self._active:
                return None
        self._last_start = time.monotonic()
        return pending
