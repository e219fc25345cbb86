"""
The frame scheduler and its worker thread, alone (no ROS): hand-over, drops, rate, errors,
and the turns it gives several cameras.
"""

import threading
import time

from clipseg_ros.frame_slot import (
    FrameCounters, FrameScheduler, RecentDurations, RecentTimes, WAITING_FRAMES)
import pytest


class Recorder:
    """A process function that records frames and can be held until released."""

    def __init__(self, fail_on=()):
        self.frames = []
        self.batches = []
        self.cameras = []
        self.errors = []
        self.fail_on = set(fail_on)
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.condition = threading.Condition()

    def process(self, jobs):
        self.started.set()
        self.release.wait(10.0)
        for camera, frame, _ in jobs:
            if frame in self.fail_on:
                raise RuntimeError(f'frame {frame} failed (injected)')
        with self.condition:
            self.batches.append([frame for _, frame, _ in jobs])
            for camera, frame, _ in jobs:
                self.frames.append(frame)
                self.cameras.append(camera)
            self.condition.notify_all()

    def on_error(self, jobs, error):
        with self.condition:
            self.errors.append(str(error))
            self.condition.notify_all()

    def wait(self, predicate, timeout=10.0):
        with self.condition:
            return self.condition.wait_for(predicate, timeout)


@pytest.fixture
def recorder():
    return Recorder()


def make_worker(recorder, interval=0.0, cameras=('',), batch=False):
    return FrameScheduler(recorder.process, recorder.on_error, lambda: interval, cameras,
                          batch=lambda: batch)


def test_frames_offered_while_inactive_are_kept_but_not_processed(recorder):
    worker = make_worker(recorder)
    worker.offer('', 'early', time.monotonic())
    assert worker.latest('') == 'early'
    worker.start()
    try:
        worker.offer('', 'first', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['first'])
    finally:
        worker.stop()
    assert 'early' not in recorder.frames
    assert worker.counters('').dropped == 0


def test_a_newer_frame_replaces_the_pending_one_and_counts_a_drop(recorder):
    worker = make_worker(recorder)
    worker.start()
    try:
        recorder.release.clear()
        worker.offer('', 1, time.monotonic())
        assert recorder.started.wait(10.0)  # frame 1 is being processed and held
        for frame in (2, 3, 4):
            worker.offer('', frame, time.monotonic())
        recorder.release.set()
        assert recorder.wait(lambda: recorder.frames == [1, 4])
    finally:
        worker.stop()
    assert worker.counters('').dropped == 2  # 2 and 3 were replaced before the worker took them


def test_stop_joins_and_nothing_is_processed_afterwards(recorder):
    worker = make_worker(recorder)
    worker.start()
    worker.offer('', 'a', time.monotonic())
    assert recorder.wait(lambda: recorder.frames == ['a'])
    worker.stop()
    assert not worker.active
    worker.offer('', 'late', time.monotonic())
    time.sleep(0.2)
    assert recorder.frames == ['a']
    assert worker.latest('') == 'late'
    worker.clear()
    assert worker.latest('') is None


def test_a_failing_frame_goes_to_on_error_and_the_worker_goes_on():
    recorder = Recorder(fail_on={'bad'})
    worker = make_worker(recorder)
    worker.start()
    try:
        worker.offer('', 'bad', time.monotonic())
        assert recorder.wait(lambda: len(recorder.errors) == 1)
        worker.offer('', 'good', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['good'])
    finally:
        worker.stop()
    assert 'injected' in recorder.errors[0]


def test_the_rate_limit_waits_and_stop_ends_the_wait(recorder):
    worker = make_worker(recorder, interval=1000.0)
    worker.start()
    worker.offer('', 'first', time.monotonic())
    assert recorder.wait(lambda: recorder.frames == ['first'])
    worker.offer('', 'second', time.monotonic())  # due only in 1000 s
    time.sleep(0.3)
    assert recorder.frames == ['first']
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(10.0)
    assert not stopper.is_alive(), 'stop() must end the rate-limit wait'
    assert recorder.frames == ['first']


def test_counters_and_rates():
    counters = FrameCounters()
    counters.count_failure(ValueError('broken'))
    counters.count_failure(ValueError('broken again'))
    assert (counters.failed, counters.consecutive_failures) == (2, 2)
    assert counters.last_error == 'ValueError: broken again'
    counters.count_processed(time.monotonic() - 0.5, 0.25)
    assert counters.consecutive_failures == 0 and counters.processed == 1
    assert counters.last_latency_s >= 0.5 and counters.last_inference_s == 0.25
    counters.count_failure(ValueError('x'))
    counters.forget_failures()
    assert counters.consecutive_failures == 0 and counters.last_error == ''
    assert counters.failed == 3  # lifetime totals stay
    times = RecentTimes(capacity=5)
    for when in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        times.append(when)
    assert times.rate(now=5.0) == pytest.approx(1.0)  # the oldest fell out of the window
    assert RecentTimes().rate(now=1.0) == 0.0


def test_cameras_take_turns_and_a_fast_one_cannot_starve_a_slow_one(recorder):
    """Whatever the fast cameras offer, the slow camera's frame is taken within one turn each."""
    worker = make_worker(recorder, cameras=('fast', 'other', 'slow'))
    worker.start()
    try:
        recorder.release.clear()
        worker.offer('fast', 'f0', time.monotonic())
        assert recorder.started.wait(10.0)  # f0 is held in process
        # While it is held: the slow camera offers once, the fast ones many times.
        worker.offer('slow', 's0', time.monotonic())
        for index in range(1, 6):
            worker.offer('fast', f'f{index}', time.monotonic())
            worker.offer('other', f'o{index}', time.monotonic())
        recorder.release.set()
        assert recorder.wait(lambda: len(recorder.frames) == 4)
    finally:
        worker.stop()
    # After 'fast' comes 'other', then 'slow', then 'fast' again with its newest frame only.
    assert recorder.frames == ['f0', 'o5', 's0', 'f5']
    assert recorder.cameras == ['fast', 'other', 'slow', 'fast']
    assert worker.counters('fast').dropped == 4 and worker.counters('other').dropped == 4
    assert worker.counters('slow').dropped == 0


def test_each_camera_keeps_its_own_latest_frame_and_counters(recorder):
    worker = make_worker(recorder, cameras=('head', 'wrist'))
    worker.offer('head', 'h', time.monotonic())
    worker.offer('wrist', 'w', time.monotonic())
    worker.offer('gone', 'x', time.monotonic())  # a camera not served: ignored
    assert (worker.latest('head'), worker.latest('wrist'), worker.latest('gone')) == \
        ('h', 'w', None)
    worker.counters('head').received = 7
    worker.set_cameras(['wrist', 'head', 'base'])  # a reconfigure keeps lifetime totals
    assert worker.cameras == ['wrist', 'head', 'base']
    assert worker.counters('head').received == 7 and worker.counters('base').received == 0
    assert worker.latest('head') is None  # but no frame from before it
    worker.set_cameras(['base'])
    assert worker.cameras == ['base']
    with pytest.raises(KeyError):
        worker.counters('head')


def test_the_rate_limit_is_per_camera(recorder):
    """A camera waiting out its rate limit does not hold back another camera's frame."""
    worker = make_worker(recorder, interval=1000.0, cameras=('a', 'b'))
    worker.start()
    try:
        worker.offer('a', 'a1', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['a1'])
        worker.offer('a', 'a2', time.monotonic())  # due only in 1000 s
        worker.offer('b', 'b1', time.monotonic())  # b's first frame is due at once
        assert recorder.wait(lambda: recorder.frames == ['a1', 'b1'])
        time.sleep(0.2)
        assert recorder.frames == ['a1', 'b1']
    finally:
        worker.stop()


def test_with_batching_every_due_camera_goes_at_once(recorder):
    worker = make_worker(recorder, cameras=('a', 'b', 'c'), batch=True)
    worker.start()
    try:
        recorder.release.clear()
        worker.offer('a', 'a0', time.monotonic())
        assert recorder.started.wait(10.0)  # a0 held in process
        worker.offer('c', 'c1', time.monotonic())
        worker.offer('b', 'b1', time.monotonic())
        worker.offer('c', 'c2', time.monotonic())
        recorder.release.set()
        assert recorder.wait(lambda: len(recorder.batches) == 2)
    finally:
        worker.stop()
    assert recorder.batches == [['a0'], ['b1', 'c2']]  # in camera order, newest frames
    assert worker.counters('c').dropped == 1


def test_a_rate_limited_frame_goes_when_due_and_a_raised_rate_applies_while_waiting(recorder):
    interval = [0.1]
    worker = FrameScheduler(recorder.process, recorder.on_error, lambda: interval[0])
    worker.start()
    try:
        worker.offer('', 'first', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['first'])
        worker.offer('', 'second', time.monotonic())  # due 0.1 s after the first
        assert recorder.wait(lambda: recorder.frames == ['first', 'second'], 5.0)
        interval[0] = 1000.0
        worker.offer('', 'third', time.monotonic())  # due only in 1000 s ...
        time.sleep(0.2)
        assert recorder.frames == ['first', 'second']
        interval[0] = 0.0  # ... until the limit is lifted
        assert recorder.wait(lambda: recorder.frames == ['first', 'second', 'third'], 5.0)
    finally:
        worker.stop()


# ------------------------------------------------------------------ waiting for other inputs


class Inputs:
    """Which frames have their other inputs (depth) there, as the node's readiness check."""

    def __init__(self):
        self.ready = set()
        self.asked = 0

    def __call__(self, camera, frame):
        self.asked += 1
        return frame in self.ready


def waiting_worker(recorder, inputs, wait, cameras=('',), batch=False, timeouts=None):
    """A scheduler whose frames wait up to wait[0] seconds for ``inputs``."""
    def timed_out(camera, frame, received_at, waited_s):
        timeouts.append((camera, frame, received_at, waited_s))
    return FrameScheduler(recorder.process, recorder.on_error, lambda: 0.0, cameras,
                          batch=lambda: batch, inputs_ready=inputs, input_wait=lambda: wait[0],
                          on_input_timeout=timed_out if timeouts is not None else
                          (lambda *timeout: None))


def test_a_frame_waits_for_its_inputs_and_goes_when_they_arrive(recorder):
    inputs = Inputs()
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        time.sleep(0.2)
        assert recorder.frames == []  # its depth is not there: it waits
        worker.input_arrived('')      # an input that does not complete it
        time.sleep(0.1)
        assert recorder.frames == []
        inputs.ready.add('f1')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f1'])
    finally:
        worker.stop()
    counters = worker.counters('')
    assert counters.inputs_timed_out == 0 and counters.dropped == 0
    assert counters.input_waits.percentile(50) > 0.0


def test_a_frame_whose_inputs_came_first_goes_at_once(recorder):
    inputs = Inputs()
    inputs.ready.add('f1')
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['f1'])
    finally:
        worker.stop()
    assert worker.counters('').input_waits.percentile(99) == 0.0
    assert worker.counters('').inputs_timed_out == 0


def test_inputs_that_never_come_time_out_counted_told_and_the_next_frame_waits_again(
        recorder):
    inputs, wait, timeouts = Inputs(), [0.05], []
    worker = waiting_worker(recorder, inputs, wait, timeouts=timeouts)
    worker.start()
    try:
        offered = time.monotonic()
        worker.offer('', 'f1', offered)
        assert recorder.wait(lambda: recorder.frames == ['f1'])  # after the wait, without
        assert worker.counters('').inputs_timed_out == 1
        assert [(c, f, r) for c, f, r, _ in timeouts] == [('', 'f1', offered)]
        assert timeouts[0][3] >= 0.05
        # The scheduler itself does not stall (the depth side does, through inputs_ready).
        wait[0] = 1000.0
        worker.offer('', 'f2', time.monotonic())
        time.sleep(0.2)
        assert recorder.frames == ['f1']
        inputs.ready.add('f2')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f1', 'f2'])
    finally:
        worker.stop()
    assert worker.counters('').inputs_timed_out == 1 and len(timeouts) == 1


def test_depth_that_comes_after_the_next_frame_still_finds_its_frame(recorder):
    """30 Hz colour with depth 40-50 ms late: each frame's depth comes after the next frame."""
    inputs = Inputs()
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        worker.offer('', 'f2', time.monotonic())  # f1 still waits: both are kept
        inputs.ready.add('f1')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f1'])
        worker.offer('', 'f3', time.monotonic())
        inputs.ready.add('f2')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f1', 'f2'])
        inputs.ready.add('f3')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f1', 'f2', 'f3'])
    finally:
        worker.stop()
    counters = worker.counters('')
    assert counters.dropped == 0 and counters.inputs_timed_out == 0


def test_the_newest_ready_frame_goes_and_the_older_ones_are_dropped(recorder):
    inputs = Inputs()
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        for frame in ('f1', 'f2', 'f3'):
            worker.offer('', frame, time.monotonic())
        inputs.ready.add('f2')   # f1's depth was lost, f2's came: f1 can no longer be newest
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f2'])
        time.sleep(0.1)
        assert recorder.frames == ['f2']  # f3 still waits for its own
        assert worker.counters('').dropped == 1
        inputs.ready.add('f3')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f2', 'f3'])
    finally:
        worker.stop()
    assert worker.counters('').dropped == 1 and worker.counters('').inputs_timed_out == 0


def test_a_ready_frame_drops_the_waiting_frames_before_it_at_once(recorder):
    inputs = Inputs()
    inputs.ready.add('f3')
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        for frame in ('f1', 'f2', 'f3'):  # f3's depth came before it
            worker.offer('', frame, time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['f3'])
    finally:
        worker.stop()
    assert worker.counters('').dropped == 2
    assert worker.counters('').input_waits.percentile(100) == 0.0


def test_one_cameras_wait_never_holds_another_cameras_frames(recorder):
    inputs = Inputs()
    inputs.ready.update({'b1', 'b2', 'b3'})
    worker = waiting_worker(recorder, inputs, [1000.0], cameras=('a', 'b'))
    worker.start()
    try:
        worker.offer('a', 'a1', time.monotonic())  # waits for its depth
        for frame in ('b1', 'b2', 'b3'):
            worker.offer('b', frame, time.monotonic())
            assert recorder.wait(lambda: recorder.frames[-1:] == [frame])
        assert recorder.frames == ['b1', 'b2', 'b3']
        inputs.ready.add('a1')
        worker.input_arrived('a')
        assert recorder.wait(lambda: recorder.frames == ['b1', 'b2', 'b3', 'a1'])
    finally:
        worker.stop()
    assert worker.counters('b').dropped == 0 and worker.counters('a').inputs_timed_out == 0


def test_a_batch_leaves_a_waiting_camera_out(recorder):
    inputs = Inputs()
    inputs.ready.update({'a0', 'b1', 'c1'})
    worker = waiting_worker(recorder, inputs, [1000.0], cameras=('a', 'b', 'c'), batch=True)
    worker.start()
    try:
        recorder.release.clear()
        worker.offer('a', 'a0', time.monotonic())
        assert recorder.started.wait(10.0)  # a0 held in process
        worker.offer('a', 'a1', time.monotonic())  # waits for its depth
        worker.offer('b', 'b1', time.monotonic())
        worker.offer('c', 'c1', time.monotonic())
        recorder.release.set()
        assert recorder.wait(lambda: len(recorder.batches) == 2)
        time.sleep(0.1)
        assert recorder.batches == [['a0'], ['b1', 'c1']]
        inputs.ready.add('a1')
        worker.input_arrived('a')
        assert recorder.wait(lambda: recorder.batches[-1:] == [['a1']])
    finally:
        worker.stop()


def test_a_newer_frame_replaces_a_waiting_one(recorder):
    inputs = Inputs()
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        worker.offer('', 'f2', time.monotonic())  # f1 still waits for its depth: replaced
        inputs.ready.update({'f1', 'f2'})
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f2'])
        time.sleep(0.1)
    finally:
        worker.stop()
    assert recorder.frames == ['f2']
    assert worker.counters('').dropped == 1 and worker.counters('').inputs_timed_out == 0


def test_at_most_waiting_frames_wait_and_the_oldest_wait_decides_the_time_out(recorder):
    """
    Depth that comes too late for every frame: frames pushed out of the full list are dropped
    and hand their wait's start on, so a frame still goes once the first wait is over, and the
    wait recorded is the whole wait, not the newest frame's share of it.
    """
    inputs, timeouts = Inputs(), []
    inputs.ready.add('busy')
    worker = waiting_worker(recorder, inputs, [5.0], timeouts=timeouts)
    worker.start()
    try:
        recorder.release.clear()
        worker.offer('', 'busy', time.monotonic())
        assert recorder.started.wait(10.0)  # held in process while the next ones come
        now = time.monotonic()
        frames = [f'f{k}' for k in range(WAITING_FRAMES + 2)]
        worker.offer('', frames[0], now - 10.0)  # a frame that began waiting 10 s ago ...
        for frame in frames[1:]:                 # ... pushed out by newer waiting frames
            worker.offer('', frame, now)
        assert worker.counters('').dropped == 2
        recorder.release.set()
        # The newest goes once the first frame's wait is over; the others are dropped.
        assert recorder.wait(lambda: recorder.frames == ['busy', frames[-1]], 4.0)
    finally:
        worker.stop()
    counters = worker.counters('')
    assert counters.dropped == len(frames) - 1 and counters.inputs_timed_out == 1
    assert [frame for _, frame, _, _ in timeouts] == [frames[-1]]
    assert timeouts[0][3] >= 10.0
    assert counters.input_waits.percentile(100) >= 10.0


def test_a_readiness_check_that_raises_lets_the_frame_go(recorder):
    broken = [False]

    def check(camera, frame):
        if broken[0]:
            raise ValueError('no header')
        return False
    worker = FrameScheduler(recorder.process, recorder.on_error, lambda: 0.0,
                            inputs_ready=check, input_wait=lambda: 1000.0)
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())  # waits: the check says no
        time.sleep(0.1)
        assert recorder.frames == []
        broken[0] = True
        worker.input_arrived('')  # the check raises: the frame goes instead of waiting
        assert recorder.wait(lambda: recorder.frames == ['f1'])
        worker.offer('', 'f2', time.monotonic())  # raises at the offer: goes at once
        assert recorder.wait(lambda: recorder.frames == ['f1', 'f2'])
    finally:
        worker.stop()
    assert worker.counters('').inputs_timed_out == 0


def test_a_timeout_callback_that_raises_does_not_stop_the_worker(recorder):
    def raising(*timeout):
        raise RuntimeError('logger gone')
    worker = FrameScheduler(recorder.process, recorder.on_error, lambda: 0.0,
                            inputs_ready=lambda camera, frame: frame == 'f2',
                            input_wait=lambda: 0.01, on_input_timeout=raising)
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['f1'])
        worker.offer('', 'f2', time.monotonic())
        assert recorder.wait(lambda: recorder.frames == ['f1', 'f2'])
    finally:
        worker.stop()


def test_stopping_while_frames_wait_drops_them_and_returns_at_once(recorder):
    inputs = Inputs()
    worker = waiting_worker(recorder, inputs, [1000.0])
    worker.start()
    worker.offer('', 'f1', time.monotonic())
    worker.offer('', 'f2', time.monotonic())
    worker.stop()  # joined: the worker does not sit out the 1000 s wait
    assert not worker.active
    inputs.ready.update({'f1', 'f2'})
    worker.input_arrived('')  # too late: nothing is pending any more
    worker.start()
    try:
        worker.offer('', 'f3', time.monotonic())
        inputs.ready.add('f3')
        worker.input_arrived('')
        assert recorder.wait(lambda: recorder.frames == ['f3'])
    finally:
        worker.stop()
    assert recorder.frames == ['f3']


def test_a_shorter_wait_set_while_a_frame_waits_applies_to_it(recorder):
    inputs, wait = Inputs(), [1000.0]
    worker = waiting_worker(recorder, inputs, wait)
    worker.start()
    try:
        worker.offer('', 'f1', time.monotonic())
        time.sleep(0.1)
        assert recorder.frames == []
        wait[0] = 0.0  # read again within RATE_RECHECK_S
        assert recorder.wait(lambda: recorder.frames == ['f1'])
    finally:
        worker.stop()
    assert worker.counters('').inputs_timed_out == 1


def test_recent_durations_percentiles():
    durations = RecentDurations(capacity=100)
    assert durations.percentile(50) is None
    for value in range(1, 201):  # the first hundred fall out
        durations.append(value / 1000.0)
    assert durations.percentile(50) == pytest.approx(0.150)
    assert durations.percentile(99) == pytest.approx(0.199)
    assert durations.percentile(100) == pytest.approx(0.200)
