"""
The stall after a camera's wait for depth ran out: its frames go at once, without waiting,
until a depth image arrives that one of them would have got by waiting, so a depth stream that
stops, or keeps coming but never pairs, costs one wait and not one per depth image. Plain
Python, no rclpy.
"""

from collections import deque
from collections.abc import Callable
import threading

# Stamps of the frames sent during a stall, kept while within depth_wait of their arrival:
# enough for the longest depth_wait (5 s) at 50 Hz; each is two numbers.
STALL_MEMORY = 256


class DepthStall:
    """Whether a camera's frames go at once, and the frames sent so that the depth may end it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: deque | None = None  # (stamp_ns, received_at) per frame; None: no stall

    @property
    def active(self) -> bool:
        return self._sent is not None

    def begin(self, stamp_ns: int, received_at: float) -> None:
        """A frame (this one) went without its depth after the whole wait."""
        with self._lock:
            self._sent = deque([(stamp_ns, received_at)], maxlen=STALL_MEMORY)

    def went_at_once(self, stamp_ns: int, received_at: float) -> bool:
        """Remember a frame sent without waiting; False when there is no stall."""
        with self._lock:
            if self._sent is None:
                return False
            self._sent.append((stamp_ns, received_at))
            return True

    def end(self) -> None:
        with self._lock:
            self._sent = None

    def end_if_paired(self, has_depth: Callable[[int], bool], now: float,
                      wait_s: float) -> bool:
        """
        End the stall when a frame sent during it, within ``wait_s`` of ``now``, now has its
        depth (``has_depth(stamp_ns)``): waiting would have given it. Depth that comes later
        than the wait, or never pairs (another clock, stamp 0), leaves the stall on.
        """
        with self._lock:
            if self._sent is None:
                return False
            while self._sent and now - self._sent[0][1] > wait_s:
                self._sent.popleft()
            if not any(has_depth(stamp) for stamp, _ in self._sent):
                return False
            self._sent = None
            return True
