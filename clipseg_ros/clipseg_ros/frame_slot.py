"""
Each camera's newest frame and the worker thread that processes them, free of rclpy.

A camera faster than the model replaces its pending frame (counted as dropped) instead of
building a queue; the worker serves the cameras in turn, sleeps on a condition variable between
frames, honours a maximum rate per camera, holds a camera's last few frames (for a bounded
time) until their other inputs, such as their depth images, are there, and stops (joined) on
deactivate, so no frame is processed afterwards.
"""

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import math
import threading
import time
from typing import Any


class RecentValues:
    """Recent values, appended by one thread while another reads them."""

    def __init__(self, capacity: int = 300) -> None:
        self._values: deque = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def append(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def snapshot(self) -> list[float]:
        with self._lock:
            return list(self._values)


class RecentTimes(RecentValues):
    """Times of recent events, read as a rate."""

    def rate(self, now: float, window: float = 5.0) -> float:
        """Events per second over the last ``window`` seconds (0 with fewer than two)."""
        recent = [t for t in self.snapshot() if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


class RecentDurations(RecentValues):
    """Recent durations in seconds, read as percentiles."""

    def percentile(self, q: float) -> float | None:
        """The q-th percentile of the recent durations, None while there are none."""
        values = sorted(self.snapshot())
        if not values:
            return None
        rank = math.ceil(q / 100.0 * len(values))  # nearest rank
        return values[min(max(rank, 1), len(values)) - 1]


@dataclass
class FrameCounters:
    """What happened to camera frames; read by diagnostics and tests."""

    received: int = 0
    processed: int = 0
    dropped: int = 0      # replaced by a newer frame before the worker took it
    rejected: int = 0     # malformed input
    failed: int = 0       # inference raised
    inputs_timed_out: int = 0  # taken after waiting the whole input wait without its inputs
    consecutive_failures: int = 0
    last_latency_s: float = 0.0
    last_inference_s: float = 0.0
    last_error: str = ''
    # Recent monotonic times, for the rates in diagnostics.
    receive_times: RecentTimes = field(default_factory=RecentTimes)
    process_times: RecentTimes = field(default_factory=RecentTimes)
    # How long recent frames were held for their other inputs (0: they were there at once).
    input_waits: RecentDurations = field(default_factory=RecentDurations)

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


# Frames of one camera kept while they wait for their other inputs: the wait is per camera, so
# a depth image that comes after the next colour frame (30 Hz colour, depth 40-50 ms late)
# still finds its frame; three cover depth up to three frame periods late, 100 ms at 30 Hz
# (the default depth_wait), while holding at most three frames' pixels.
WAITING_FRAMES = 3


@dataclass
class WaitingFrame:
    """A frame not taken yet, and whether its other inputs are there."""

    frame: Any
    received_at: float
    ready_at: float | None = None  # when its inputs were there; None: it waits for them
    # Start of the wait it belongs to: a frame pushed out of a full list hands its start to the
    # next one, so frames whose inputs come too late still go once a wait is over.
    waiting_since: float = 0.0


@dataclass
class CameraSlot:
    """One camera's place in the scheduler: its newest frames and its counters."""

    counters: FrameCounters = field(default_factory=FrameCounters)
    # Frames not taken yet, oldest first: at most one ready (older frames are dropped when a
    # newer one is ready), then at most WAITING_FRAMES waiting for their inputs.
    pending: deque = field(default_factory=deque)
    latest: Any = None                         # the newest frame offered, processed or not
    last_start: float = -math.inf              # no frame yet: the first is never rate-limited

    def forget_pending(self) -> None:
        self.pending.clear()

    def newest_ready(self) -> int | None:
        """Index of the newest pending frame whose inputs are there, None if all wait."""
        for index in range(len(self.pending) - 1, -1, -1):
            if self.pending[index].ready_at is not None:
                return index
        return None

    def drop_before(self, index: int) -> None:
        """Drop (counted) the pending frames older than the one at ``index``."""
        for _ in range(index):
            self.pending.popleft()
            self.counters.dropped += 1

    def wait_started(self) -> float | None:
        """Start of the current wait: the earliest start among the waiting frames."""
        starts = [entry.waiting_since for entry in self.pending if entry.ready_at is None]
        return min(starts) if starts else None


# Longest sleep of a worker holding a rate-limited frame before it reads the rate again.
RATE_RECHECK_S = 0.5
# (camera, frame, received_at)
Job = tuple[str, Any, float]
# (camera, frame, received_at, seconds waited): a frame that went without its inputs
InputTimeout = tuple[str, Any, float, float]


class FrameScheduler:
    """
    Keeps each camera's newest frame and hands them to ``process(jobs)`` on one worker thread,
    a job being ``(camera, frame, received_at)``, serving the cameras with a frame due in turn.

    With ``batch()`` false, ``jobs`` holds one frame, and a camera's frame waits for at most
    one turn of every other camera, whatever their rates, so a fast camera cannot starve a slow
    one; with it true, every camera's due frame goes at once (one encoder pass). ``min_interval()``
    gives the seconds to keep between two processed frames of one camera (0: none);
    ``on_error(jobs, error)`` gets whatever ``process`` raises, and the worker goes on.

    ``inputs_ready(camera, frame)`` says whether the frame's other inputs (its depth image) are
    there or can no longer come; it is asked when the frame is offered and, for the frames
    still waiting, at each ``input_arrived(camera)``. Up to WAITING_FRAMES frames of a camera
    wait, apart from the other cameras; the newest whose inputs are there goes, the older ones
    are dropped. When none is ready within ``input_wait()`` seconds of the wait's start, the
    newest goes without its inputs: counted, and told to ``on_input_timeout(camera, frame,
    received_at, waited_s)`` (the depth side then lets the camera's frames go at once).
    """

    def __init__(self, process: Callable[[list[Job]], None],
                 on_error: Callable[[list[Job], Exception], None],
                 min_interval: Callable[[], float], cameras: Sequence[str] = ('',),
                 batch: Callable[[], bool] = lambda: False,
                 inputs_ready: Callable[[str, Any], bool] = lambda camera, frame: True,
                 input_wait: Callable[[], float] = lambda: 0.0,
                 on_input_timeout: Callable[[str, Any, float, float], None] = (
                     lambda camera, frame, received_at, waited_s: None)) -> None:
        self._process = process
        self._on_error = on_error
        self._min_interval = min_interval
        self._batch = batch
        self._inputs_ready = inputs_ready
        self._input_wait = input_wait
        self._on_input_timeout = on_input_timeout
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
                slot.forget_pending()
                slot.latest = None
            self._order = list(names)
            self._turn = 0

    def counters(self, camera: str) -> FrameCounters:
        return self._slots[camera].counters

    def latest(self, camera: str) -> Any:
        """The newest frame offered by ``camera`` (processed or not), or None."""
        slot = self._slots.get(camera)
        return slot.latest if slot is not None else None

    def offer(self, camera: str, frame: Any, received_at: float) -> None:
        """
        Keep ``frame`` as the camera's newest; while active, it waits for its inputs or, when
        they are there, replaces the older pending frames (counted as dropped).
        """
        with self._ready:
            slot = self._slots.get(camera)
            if slot is None:
                return  # a camera no longer served (a callback racing a reconfigure)
            slot.latest = frame
            if not self._active:
                return  # kept as the latest frame only: not processed, not counted as dropped
            entry = WaitingFrame(frame, received_at, waiting_since=received_at)
            slot.pending.append(entry)
            if self._ask_inputs_ready(camera, frame):
                entry.ready_at = received_at
                slot.drop_before(len(slot.pending) - 1)
            else:
                self._push_out_oldest_waiting(slot)
            self._ready.notify()

    @staticmethod
    def _push_out_oldest_waiting(slot: CameraSlot) -> None:
        """Keep WAITING_FRAMES waiting frames (and a ready one); the oldest wait's start stays."""
        waiting = [entry for entry in slot.pending if entry.ready_at is None]
        if len(waiting) <= WAITING_FRAMES:
            return
        slot.pending.remove(waiting[0])
        slot.counters.dropped += 1
        waiting[1].waiting_since = min(waiting[1].waiting_since, waiting[0].waiting_since)

    def input_arrived(self, camera: str) -> None:
        """
        Another input of ``camera`` arrived: the newest waiting frame whose inputs are now there
        becomes ready to go, and the frames older than it are dropped.
        """
        with self._ready:
            slot = self._slots.get(camera)
            if slot is None or not self._active:
                return
            for index in range(len(slot.pending) - 1, -1, -1):
                entry = slot.pending[index]
                if entry.ready_at is None and not self._ask_inputs_ready(camera, entry.frame):
                    continue
                if entry.ready_at is None:
                    entry.ready_at = time.monotonic()
                slot.drop_before(index)
                self._ready.notify()
                break

    def _ask_inputs_ready(self, camera: str, frame: Any) -> bool:
        try:
            return bool(self._inputs_ready(camera, frame))
        except Exception:  # noqa: B902 - a callback thread must not die: the frame goes now
            return True

    def start(self) -> None:
        with self._ready:
            for slot in self._slots.values():
                slot.forget_pending()  # a frame from before activation is stale
            self._active = True
        self._thread = threading.Thread(target=self._run, name='clipseg_worker', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the frame in progress (joined); drop the pending frames."""
        with self._ready:
            self._active = False
            for slot in self._slots.values():
                slot.forget_pending()
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def clear(self) -> None:
        """Forget every camera's pending and latest frame."""
        with self._ready:
            for slot in self._slots.values():
                slot.forget_pending()
                slot.latest = None

    def _run(self) -> None:
        while self._wait_for_due_frame():
            with self.processing:
                interval, batch = self._min_interval(), self._batch()
                wait = self._input_wait()
                timeouts: list[InputTimeout] = []
                with self._ready:
                    jobs = self._take_due(time.monotonic(), interval, wait, batch, timeouts) \
                        if self._active else []
                for timeout in timeouts:
                    self._report_timeout(timeout)
                if not jobs:
                    continue
                try:
                    self._process(jobs)
                except Exception as error:  # the worker must outlive any one frame
                    self._on_error(jobs, error)

    def _report_timeout(self, timeout: InputTimeout) -> None:
        try:
            self._on_input_timeout(*timeout)
        except Exception:  # noqa: B902 - the frame goes on; the worker must not die
            pass

    def _wait_for_due_frame(self) -> bool:
        """Wait until some camera's pending frame is due; False once stopped."""
        with self._ready:
            while self._active:
                wait = self._seconds_until_due(time.monotonic(), self._min_interval(),
                                               self._input_wait())
                if wait is not None and wait <= 0.0:
                    return True
                # Woken by a new frame, an input or stop(); a rate-limited or waiting frame
                # wakes itself when due, and at least every RATE_RECHECK_S, so a changed
                # max_rate_hz or input wait applies soon.
                self._ready.wait(None if wait is None else min(wait, RATE_RECHECK_S))
            return False

    @staticmethod
    def _due_at(slot: CameraSlot, interval: float, input_wait: float) -> float:
        due = slot.last_start + interval
        started = slot.wait_started() if slot.newest_ready() is None else None
        if started is not None:
            due = max(due, started + input_wait)
        return due

    def _seconds_until_due(self, now: float, interval: float,
                           input_wait: float) -> float | None:
        waits = [self._due_at(slot, interval, input_wait) - now
                 for slot in self._slots.values() if slot.pending]
        return min(waits) if waits else None

    def _take_due(self, now: float, interval: float, input_wait: float, batch: bool,
                  timeouts: list[InputTimeout]) -> list[Job]:
        """
        Take the due frame of the camera whose turn it is, or of the first due after it; with
        ``batch``, every due frame, in that order. Frames that go without their inputs are
        added to ``timeouts``.
        """
        count = len(self._order)
        jobs = []
        for step in range(count):
            index = (self._turn + step) % count
            camera = self._order[index]
            slot = self._slots[camera]
            if not slot.pending or self._due_at(slot, interval, input_wait) > now:
                continue
            ready = slot.newest_ready()
            if ready is not None:
                slot.drop_before(ready)
                entry = slot.pending.popleft()
                waited = entry.ready_at - entry.received_at
            else:  # the wait ran out: the newest goes without its inputs
                waited = now - slot.wait_started()
                slot.drop_before(len(slot.pending) - 1)
                entry = slot.pending.popleft()
                slot.counters.inputs_timed_out += 1
                timeouts.append((camera, entry.frame, entry.received_at, waited))
            slot.counters.input_waits.append(max(0.0, waited))
            slot.last_start = now
            jobs.append((camera, entry.frame, entry.received_at))
            if not batch:
                self._turn = (index + 1) % count
                break
        return jobs
