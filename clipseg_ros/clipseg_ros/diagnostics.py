"""The node's DiagnosticStatus, built from its counters and state; no rclpy."""

from dataclasses import dataclass

from clipseg_ros.depth_input import DepthCounters
from clipseg_ros.frame_slot import FrameCounters
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# ERROR after this many frames in a row failed.
FAILURES_BEFORE_ERROR = 3


@dataclass
class NodeHealth:
    """What the status is made of, read at one moment."""

    name: str
    device: str                      # '' without a model
    engine_error: str                # why no model is loaded ('' when one is)
    active: bool
    seconds_since_frame: float | None
    stale_after: float
    counters: FrameCounters
    cpu_threads: int
    device_memory_bytes: int
    prompt_count: int
    prompt_version: int
    model: str
    depth: DepthCounters | None = None  # None: depth not in use


def level_and_message(health: NodeHealth) -> tuple[bytes, str]:
    counters = health.counters
    if not health.device:
        return DiagnosticStatus.ERROR, health.engine_error or 'model not loaded'
    if not health.active:
        return DiagnosticStatus.OK, 'inactive'
    if health.seconds_since_frame is None or health.seconds_since_frame > health.stale_after:
        return DiagnosticStatus.WARN, 'no camera frame received recently'
    if counters.consecutive_failures >= FAILURES_BEFORE_ERROR:
        return DiagnosticStatus.ERROR, (f'the last {counters.consecutive_failures} frames '
                                        f'failed: {counters.last_error}')
    if counters.failed and counters.last_error:
        return DiagnosticStatus.OK, f'running; last inference error: {counters.last_error}'
    return DiagnosticStatus.OK, 'running'


def segmentation_status(health: NodeHealth, now: float) -> DiagnosticStatus:
    """Level, message and key/values of the node's segmentation."""
    counters = health.counters
    level, message = level_and_message(health)
    age = 'never' if health.seconds_since_frame is None else \
        f'{health.seconds_since_frame:.3f}'
    values = {
        'input_rate_hz': f'{counters.receive_times.rate(now):.2f}',
        'processing_rate_hz': f'{counters.process_times.rate(now):.2f}',
        'frames_received': str(counters.received),
        'frames_processed': str(counters.processed),
        'frames_dropped': str(counters.dropped),
        'frames_rejected': str(counters.rejected),
        'frames_failed': str(counters.failed),
        'last_latency_ms': f'{counters.last_latency_s * 1e3:.1f}',
        'last_inference_ms': f'{counters.last_inference_s * 1e3:.1f}',
        'seconds_since_last_frame': age,
        'device': health.device or 'none',
        'cpu_threads': str(health.cpu_threads),
        'device_memory_bytes': str(health.device_memory_bytes),
        'prompt_count': str(health.prompt_count),
        'prompt_version': str(health.prompt_version),
        'model': health.model,
    }
    if health.depth is not None:
        values.update({f'depth_{key}' if not key.startswith('depth') else key: str(value)
                       for key, value in vars(health.depth).items()})
    return DiagnosticStatus(name=health.name, hardware_id=health.device, level=level,
                            message=message,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
