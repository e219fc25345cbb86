"""The node's DiagnosticStatus entries, built from its counters and state; no rclpy."""

from dataclasses import dataclass

from clipseg_ros.depth_input import DepthCounters
from clipseg_ros.frame_slot import FrameCounters
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# ERROR after this many frames in a row failed.
FAILURES_BEFORE_ERROR = 3


@dataclass
class EngineHealth:
    """The shared model's side of the status, read at one moment."""

    device: str                      # '' without a model
    engine_error: str                # why no model is loaded ('' when one is)
    runtime: str                     # back end, precision, CPU features ('' without a model)
    active: bool
    cpu_threads: int
    device_memory_bytes: int
    prompt_count: int
    prompt_version: int
    model: str

    @classmethod
    def of(cls, engine, engine_error: str, active: bool, cpu_threads: int, prompt_count: int,
           prompt_version: int, model: str) -> 'EngineHealth':
        """The health of ``engine`` (a ClipSegEngine, or None while none is loaded)."""
        return cls(device=str(engine.device) if engine else '', engine_error=engine_error,
                   runtime=engine.runtime_summary if engine else '', active=active,
                   cpu_threads=cpu_threads,
                   device_memory_bytes=engine.memory_in_use() if engine else 0,
                   prompt_count=prompt_count, prompt_version=prompt_version, model=model)


@dataclass
class CameraHealth:
    """One camera's side of the status, read at one moment."""

    camera: str
    seconds_since_frame: float | None
    stale_after: float
    counters: FrameCounters
    depth: DepthCounters | None = None  # None: depth not in use
    image_publishers: int = 0           # on the image topic, at the last graph read
    image_reliability: str = ''         # of the image subscription ('' before configure)
    qos_incompatible: int = 0           # incompatible-QoS events on the camera's inputs

    @classmethod
    def of(cls, camera: str, counters: FrameCounters, pipeline, stale_after: float,
           now: float) -> 'CameraHealth':
        """Read from a camera's counters and its CameraPipeline (None before configure)."""
        last_frame = pipeline.last_frame_time if pipeline is not None else None
        depth = pipeline.depth if pipeline is not None else None
        inputs = [] if pipeline is None else [pipeline.image_input] + (
            depth.inputs if depth is not None else [])
        return cls(camera=camera, stale_after=stale_after, counters=counters,
                   seconds_since_frame=None if last_frame is None else now - last_frame,
                   depth=depth.pairing.counters if depth is not None else None,
                   image_publishers=inputs[0].publisher_count if inputs else 0,
                   image_reliability=inputs[0].reliability_name if inputs else '',
                   qos_incompatible=sum(i.incompatible_events for i in inputs))


def level_and_message(engine: EngineHealth,
                      camera: CameraHealth | None) -> tuple[bytes, str]:
    """The level of the engine (camera None) or of one camera served by it."""
    if not engine.device:
        return DiagnosticStatus.ERROR, engine.engine_error or 'model not loaded'
    if not engine.active:
        return DiagnosticStatus.OK, 'inactive'
    if camera is None:
        return DiagnosticStatus.OK, 'running'
    counters = camera.counters
    if camera.qos_incompatible:
        return DiagnosticStatus.WARN, ('a publisher\'s QoS is incompatible with the '
                                       'subscriptions: set qos_reliability to auto')
    if camera.seconds_since_frame is None or camera.seconds_since_frame > camera.stale_after:
        if camera.image_publishers:
            return DiagnosticStatus.WARN, (
                f'no camera frame received recently, though the topic has '
                f'{camera.image_publishers} publisher(s): QoS or frames lost between '
                'processes? (docs/robots.md)')
        return DiagnosticStatus.WARN, 'no camera frame received recently'
    if counters.consecutive_failures >= FAILURES_BEFORE_ERROR:
        return DiagnosticStatus.ERROR, (f'the last {counters.consecutive_failures} frames '
                                        f'failed: {counters.last_error}')
    if counters.failed and counters.last_error:
        return DiagnosticStatus.OK, f'running; last inference error: {counters.last_error}'
    return DiagnosticStatus.OK, 'running'


def _camera_values(camera: CameraHealth, now: float) -> dict[str, str]:
    counters = camera.counters
    age = camera.seconds_since_frame
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
        'seconds_since_last_frame': 'never' if age is None else f'{age:.3f}',
        'image_publishers': str(camera.image_publishers),
        'image_reliability': camera.image_reliability,
        'qos_incompatible_events': str(camera.qos_incompatible),
    }
    if camera.depth is not None:
        values.update({f'depth_{key}' if not key.startswith('depth') else key: str(value)
                       for key, value in vars(camera.depth).items()})
        values.update(_depth_wait_values(counters))
    return values


def _depth_wait_values(counters: FrameCounters) -> dict[str, str]:
    """How long recent frames waited for their depth, and how many went on without it."""
    def milliseconds(q: float) -> str:
        seconds = counters.input_waits.percentile(q)
        return 'none' if seconds is None else f'{seconds * 1e3:.1f}'
    return {'depth_wait_p50_ms': milliseconds(50), 'depth_wait_p99_ms': milliseconds(99),
            'depth_wait_timeouts': str(counters.inputs_timed_out)}


def _engine_values(engine: EngineHealth) -> dict[str, str]:
    return {
        'device': engine.device or 'none',
        'runtime': engine.runtime or 'none',
        'cpu_threads': str(engine.cpu_threads),
        'device_memory_bytes': str(engine.device_memory_bytes),
        'prompt_count': str(engine.prompt_count),
        'prompt_version': str(engine.prompt_version),
        'model': engine.model,
    }


def _status(name: str, engine: EngineHealth, level_message: tuple[bytes, str],
            values: dict[str, str]) -> DiagnosticStatus:
    level, message = level_message
    return DiagnosticStatus(name=name, hardware_id=engine.device, level=level, message=message,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def node_statuses(node_name: str, engine: EngineHealth, cameras: list[CameraHealth],
                  now: float) -> list[DiagnosticStatus]:
    """
    The node's statuses: one named '<node>: segmentation' for the single unnamed camera (the
    engine's values and the camera's together); with named cameras, '<node>: engine' and one
    '<node>: camera <name>' per camera.
    """
    if len(cameras) == 1 and cameras[0].camera == '':
        return [_status(f'{node_name}: segmentation', engine,
                        level_and_message(engine, cameras[0]),
                        {**_camera_values(cameras[0], now), **_engine_values(engine)})]
    processed = sum(camera.counters.processed for camera in cameras)
    rate = sum(camera.counters.process_times.rate(now) for camera in cameras)
    engine_values = {**_engine_values(engine), 'cameras': ', '.join(c.camera for c in cameras),
                     'frames_processed': str(processed), 'processing_rate_hz': f'{rate:.2f}'}
    statuses = [_status(f'{node_name}: engine', engine, level_and_message(engine, None),
                        engine_values)]
    for camera in cameras:
        statuses.append(_status(f'{node_name}: camera {camera.camera}', engine,
                                level_and_message(engine, camera),
                                _camera_values(camera, now)))
    return statuses
