"""Ctrl-C and SIGTERM at any moment stop the installed node cleanly: exit status 0, no traceback.

Under launch, Ctrl-C reaches the node twice (the terminal's process group, then launch
forwarding it), so every case sends its signal twice, 50 ms apart, to the node started as
launch starts it (test_subprocess_node.py's command line, the tiny model), at one of three
moments: while starting (imports, rcl init, model loading, autostart; counted from when the
process has its SIGTERM handler, installed with the SIGINT one), idle (configured, subscribed,
no frames), or inferring (frames flowing and answered). Cases run a few at a time, so the whole
file costs about a minute on a small host. The interpreter's own start-up and the entry-point
script's look-up (about 40 ms on an idle host, several times that on a loaded one) come before
the node's handlers exist and are not part of "any moment" (docs/robots.md).
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from clipseg_ros import launch_args
from clipseg_ros_interfaces.msg import Segmentation
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from node_harness import encode_frame, rgb_frame
from test_subprocess_node import environment_without_profile, fast_params_file, launched_command

PARALLEL_NODES = 5
FRAME_RATE_HZ = 15.0
ANSWERS_BEFORE_SIGNAL = 3


@dataclass(frozen=True)
class Moment:
    """When to signal: ``phase`` starting / idle / inferring, then ``delay`` seconds more."""

    phase: str
    delay: float


SIGINT_MOMENTS = (
    [Moment('starting', d) for d in (0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 2.5, 4.0)] +
    [Moment('idle', d) for d in (0.0, 0.3, 1.0, 2.0)] +
    [Moment('inferring', d) for d in (0.0, 0.1, 0.2, 0.35, 0.5, 0.8, 1.2, 2.0)])
# SIGTERM takes the same handler (stop_signals.STOP_SIGNALS): one moment per phase, between
# SIGINT's, shows that it is installed and ends the same way; SIGINT sweeps the phases.
SIGTERM_MOMENTS = (
    [Moment('starting', 0.45), Moment('idle', 0.6), Moment('inferring', 0.25)])


class Cameras:
    """One camera topic per node namespace, fed while asked to, and its answers counted."""

    def __init__(self, context, namespaces: list[str]) -> None:
        self.node = rclpy.create_node('signal_test_cameras', context=context)
        self.publishers = {
            ns: self.node.create_publisher(Image, f'/{ns}/image',
                                           QoSProfile(depth=1,
                                                      reliability=ReliabilityPolicy.RELIABLE))
            for ns in namespaces}
        self.answers = dict.fromkeys(namespaces, 0)
        self.feeding: set[str] = set()
        for ns in namespaces:
            self.node.create_subscription(Segmentation, f'/{ns}/segmentation',
                                          self._counter(ns), 10)
        self._frame = encode_frame(rgb_frame(320, 240), 'rgb8')
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._executor.spin, daemon=True),
                         threading.Thread(target=self._feed, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _counter(self, ns: str):
        def count(msg: Segmentation) -> None:
            self.answers[ns] += 1
        return count

    def _feed(self) -> None:
        while not self._stopped.wait(1.0 / FRAME_RATE_HZ):
            for ns in list(self.feeding):
                self._frame.header.stamp = self.node.get_clock().now().to_msg()
                self.publishers[ns].publish(self._frame)

    def close(self) -> None:
        self._stopped.set()
        self._executor.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        self.node.destroy_node()


def wait_until(predicate, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (the node's come with its SIGINT handler)."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith('SigCgt:'))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def stop_at(moment: Moment, process: subprocess.Popen, log_path, cameras: Cameras, ns: str,
            signal_number: int) -> str:
    """Signal the node twice at ``moment``; return what went wrong ('' when it stopped clean)."""
    if moment.phase == 'starting':
        if not wait_until(lambda: catches_sigterm(process.pid), timeout=30.0):
            return f'{ns}: no SIGTERM handler after 30 s\n' + log_path.read_text()
    else:
        if not wait_until(lambda: cameras.publishers[ns].get_subscription_count() > 0):
            return f'{ns}: never subscribed\n' + log_path.read_text()
        if moment.phase == 'inferring':
            cameras.feeding.add(ns)
            if not wait_until(lambda: cameras.answers[ns] >= ANSWERS_BEFORE_SIGNAL):
                return f'{ns}: frames never answered\n' + log_path.read_text()
    time.sleep(moment.delay)
    configured = "model '" in log_path.read_text()
    process.send_signal(signal_number)
    time.sleep(0.05)
    process.send_signal(signal_number)
    try:
        status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = 'hung'
    cameras.feeding.discard(ns)
    output = log_path.read_text()
    if status == 0 and 'Traceback' not in output and 'KeyboardInterrupt' not in output:
        return ''
    return (f'{ns} {moment} (model loaded: {configured}): exit status {status}\n{output}')


def run_moments(moments, signal_number: int, context, model_dir, tmp_path) -> list[str]:
    """Start a node per moment (PARALLEL_NODES at a time), signal each; return the failures."""
    params_file = str(fast_params_file(tmp_path))
    namespaces = [f'stop{index}' for index in range(len(moments))]
    cameras = Cameras(context, namespaces)
    environ = environment_without_profile()

    def one(index: int) -> str:
        ns, directory = namespaces[index], tmp_path / namespaces[index]
        directory.mkdir()
        plan = launch_args.plan({'params_file': params_file, 'model': str(model_dir),
                                 'device': 'cpu', 'namespace': ns}, environ=environ)
        log_path = directory / 'node.log'
        with open(log_path, 'w') as log:
            process = subprocess.Popen(launched_command(plan, directory), stdout=log,
                                       stderr=subprocess.STDOUT, env={**environ, **plan.env})
        try:
            return stop_at(moments[index], process, log_path, cameras, ns, signal_number)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    try:
        with ThreadPoolExecutor(PARALLEL_NODES) as pool:
            return [failure for failure in pool.map(one, range(len(moments))) if failure]
    finally:
        cameras.close()


@pytest.mark.parametrize('signal_number, moments', [
    pytest.param(signal.SIGINT, SIGINT_MOMENTS, id='sigint_twice'),
    pytest.param(signal.SIGTERM, SIGTERM_MOMENTS, id='sigterm_twice')])
def test_signal_twice_at_any_moment_stops_cleanly(signal_number, moments, ros_context,
                                                  tiny_model_dir, tmp_path):
    failures = run_moments(moments, signal_number, ros_context, tiny_model_dir, tmp_path)
    assert not failures, f'{len(failures)} of {len(moments)} stops not clean:\n' + \
        '\n\n'.join(failures)


def test_a_stop_during_an_import_waits_for_the_import(tmp_path):
    """
    A stop abandons model loading, but never inside an import: it waits for the import.

    A half-made C extension (numpy) failed to import again on the way out, status 1.
    """
    (tmp_path / 'slow_module.py').write_text(
        'import os\nimport signal\nimport time\n\n'
        'os.kill(os.getpid(), signal.SIGTERM)  # the signal arrives inside this import\n'
        'time.sleep(0.3)\nFINISHED = True\n')
    script = (
        'import sys\nimport time\n'
        'from clipseg_ros.stop_signals import StopRequested, StopSignals\n'
        'stop = StopSignals()\nstop.install()\n'
        'try:\n'
        '    with stop.interruptible():\n'
        '        import slow_module\n'
        '        time.sleep(10.0)\n'
        'except StopRequested as stopped:\n'
        "    print('stopped', stopped, getattr(sys.modules.get('slow_module'), 'FINISHED', 0))\n")
    done = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, 'PYTHONPATH': os.pathsep.join(
                              [str(tmp_path), os.environ.get('PYTHONPATH', '')])})
    assert (done.returncode, done.stdout.strip()) == (0, 'stopped SIGTERM True'), done.stderr
