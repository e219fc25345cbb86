"""
Each camera's newest frame and the worker thread that processes them, free of rclpy.

A camera faster than the model replaces its pending frame (counted as dropped) instead of
building a queue; the worker serves the cameras in turn, sleeps on a condition variable between
frames, honours a maximum rate per camera, and stops (joined) on deactivate, so no frame is
processed afterwards.
"""

from collections import deque
from collections.abc import Callable, Sequence
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


@dataclass
class CameraSlot:
    """One camera's place in the scheduler: its newest frames and its counters."""

    counters: FrameCounters = field(default_factory=FrameCounters)
    pending: tuple[Any, float] | None = None   # (frame, received_at) not yet taken
    latest: Any = None                         # the newest frame offered, processed or not
    last_start: float = -math.inf              # no frame yet: the first is never rate-limited


# Longest sleep of a worker holding a rate-limited frame before it reads the rate again.
RATE_RECHECK_S = 0.5
# (camera, frame, received_at)
Job = tuple[str, Any, float]


class FrameScheduler:
    """
    Keeps each camera's newest frame and hands them to ``process(jobs)`` on one worker thread,
    a job being ``(camera, frame, received_at)``, serving the cameras with a frame due in turn.

    With ``batch()`` false, ``jobs`` holds one frame, and a camera's frame waits for at most
    one turn of every other camera, whatever their rates, so a fast camera cannot starve a slow
    one; with it true, every camera's due frame goes at once (one encoder pass). ``min_interval()``
    gives the seconds to keep between two processed frames of one camera (0: none);
    ``on_error(jobs, error)`` gets whatever ``process`` raises, and the worker goes on.
    """

    def __init__(self, process: Callable[[list[Job]], None],
                 on_error: Callable[[list[Job], Exception], None],
                 min_interval: Callable[[], float], cameras: Sequence[str] = ('',),
                 batch: Callable[[], bool] = lambda: False) -> None:
        self._process = process
        self._on_error = on_error
        self._min_interval = min_interval
        self._batch = batch
        self._ready = threading.Condition()
        # Held while a frame is processed, so a cleanup never frees what the worker uses.
        self.processing = threading.Lock()
        self._slots: dict[str, CameraSlot] = {}
        self._order: list[str] = []
        self._turn = 0  # index in _order of the camera that gets the next turn
        self._active = False
        self._thread: threading.Thread | None = None
        self.set_cameras(cameras)

    active = property(lambda self: self._active, doc='Whether the worker is running.')

    @property
    def cameras(self) -> list[str]:
        return list(self._order)

    def set_cameras(self, names: Sequence[str]) -> None:
        """
        Serve these cameras (at configure); a camera served before keeps its counters (lifetime
        totals) but no frame: one an image callback offered while a cleanup ran is stale.
        """
        with self._ready:
            self._slots = {name: self._slots.get(name) or CameraSlot() for name in names}
            for slot in self._slots.values():
                slot.pending = slot.latest = None
            self._order = list(names)
            self._turn = 0

    def counters(self, camera: str) -> FrameCounters:
        return self._slots[camera].counters

    def latest(self, camera: str) -> Any:
        """The newest frame offered by ``camera`` (processed or not), or None."""
        slot = self._slots.get(camera)
        return slot.latest if slot is not None else None

    def offer(self, camera: str, frame: Any, received_at: float) -> None:
        """Keep ``frame`` as the camera's newest; while active, it replaces the pending one."""
        with self._ready:
            slot = self._slots.get(camera)
            if slot is None:
                return  # a camera no longer served (a callback racing a reconfigure)
            slot.latest = frame
            if not self._active:
                return  # kept as the latest frame only: not processed, not counted as dropped
            if slot.pending is not None:
                slot.counters.dropped += 1
            slot.pending = (frame, received_at)
            self._ready.notify()

    def start(self) -> None:
        with self._ready:
            for slot in self._slots.values():
                slot.pending = None  # a frame from before activation is stale
            self._active = True
        self._thread = threading.Thread(target=self._run, name='clipseg_worker', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the frame in progress (joined); drop the pending frames."""
        with self._ready:
            self._active = False
            for slot in self._slots.values():
                slot.pending = None
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def clear(self) -> None:
        """Forget every camera's pending and latest frame."""
        with self._ready:
            for slot in self._slots.values():
                slot.pending = None
                slot.latest = None

    def _run(self) -> None:
        while self._wait_for_due_frame():
            with self.processing:
                interval, batch = self._min_interval(), self._batch()
                with self._ready:
                    jobs = self._take_due(time.monotonic(), interval, batch) \
                        if self._active else []
                if not jobs:
                    continue
                try:
                    self._process(jobs)
                except Exception as error:  # the worker must outlive any one frame
                    self._on_error(jobs, error)

    def _wait_for_due_frame(self) -> bool:
        """Wait until some camera's pending frame is due; False once stopped."""
        with self._ready:
            while self._active:
                wait = self._seconds_until_due(time.monotonic(), self._min_interval())
                if wait is not None and wait <= 0.0:
                    return True
                # Woken by a new frame or stop(); a rate-limited frame wakes itself when due,
                # and at least every RATE_RECHECK_S, so a changed max_rate_hz applies soon.
                self._ready.wait(None if wait is None else min(wait, RATE_RECHECK_S))
            return False

    def _seconds_until_due(self, now: float, interval: float) -> float | None:
        waits = [slot.last_start + interval - now
                 for slot in self._slots.values() if slot.pending is not None]
        return min(waits) if waits else None

    def _take_due(self, now: float, interval: float, batch: bool) -> list[Job]:
        """
        Take the due frame of the camera whose turn it is, or of the first due after it; with
        ``batch``, every due frame, in that order.
        """
        count = len(self._order)
        jobs = []
        for step in range(count):
            index = (self._turn + step) % count
            slot = self._slots[self._order[index]]
            if slot.pending is not None and slot.last_start + interval <= now:
                (frame, received_at), slot.pending = slot.pending, None
                slot.last_start = now
                jobs.append((self._order[index], frame, received_at))
                if not batch:
                    self._turn = (index + 1) % count
                    break
        return jobs
