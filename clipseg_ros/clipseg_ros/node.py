"""The clipseg lifecycle node: camera frames in, mask / confidence / overlay / segmentation out.

Threading: the image callback only validates and keeps the newest frame, then wakes the worker
thread.  The worker converts, runs the engine and publishes, so services answer while a frame is
being processed, and a camera faster than the model replaces the pending frame (counted as
dropped) instead of building a queue.  The executor is single-threaded: a service that needs the
model (embedding new prompts, ~/segment) holds the other callbacks until it is done.
"""

import ctypes
import ctypes.util
import functools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
from clipseg_ros_interfaces.msg import Segmentation
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy)
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from clipseg_ros import conversions
from clipseg_ros.conversions import ImageConversionError
from clipseg_ros.engine import (
    check_compile_mode, check_device_name, check_dtype_name, check_resolution, ClipSegEngine,
    cpu_thread_count, DEFAULT_MODEL, Prompt, SegmentationResult, set_cpu_threads)
from clipseg_ros.outputs import render_overlay

# Outputs: the newest result only; reliable, so a subscriber gets every result it can take.
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)


def camera_qos(reliability: str) -> QoSProfile:
    """The image subscription's QoS: the newest frame only, best_effort or reliable."""
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                      reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                                   else ReliabilityPolicy.BEST_EFFORT))


# Read once at configure: changeable while the node is unconfigured, refused while configured.
CONFIGURE_TIME_PARAMETERS = frozenset({
    'model', 'device', 'dtype', 'compile_mode', 'cpu_threads', 'prompts', 'input_transport',
    'qos_reliability'})
AT_CONFIGURE = 'read at configure (change it while unconfigured)'
CHOICES = {'input_transport': ('raw', 'compressed'),
           'qos_reliability': ('best_effort', 'reliable')}
# Prompt labels are uint8 values in the mask image.
MAX_PROMPTS_LIMIT = 255
MAX_PROMPT_CHARACTERS = 300
WARNING_THROTTLE_S = 5.0
# Diagnostics turn to ERROR after this many frames in a row failed.
FAILURES_BEFORE_ERROR = 3


@dataclass(frozen=True)
class PromptSet:
    """The prompts in force, replaced as a whole so a frame never sees half an update."""

    prompts: Tuple[Prompt, ...] = ()
    version: int = 0

    @property
    def labels(self) -> List[str]:
        return [prompt.label for prompt in self.prompts]


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
    receive_times: 'RecentTimes' = field(default_factory=lambda: RecentTimes())
    process_times: 'RecentTimes' = field(default_factory=lambda: RecentTimes())

    def forget_failures(self) -> None:
        """Start failure reporting afresh (a new configure), keeping the lifetime totals."""
        self.consecutive_failures = 0
        self.last_error = ''


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


def _descriptor(description: str, *, read_only: bool = False, float_range=None,
                integer_range=None, additional_constraints: str = '') -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only,
                                     additional_constraints=additional_constraints)
    if float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0)]
    if integer_range is not None:
        low, high, step = integer_range
        descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
    return descriptor


def validate_text_prompts(prompts: Sequence[str], max_prompts: int) -> Optional[str]:
    """Return why a list of text prompts is unacceptable, or None when it is fine."""
    if len(prompts) == 0:
        return 'no prompts given: send at least one'
    if len(prompts) > max_prompts:
        return f'{len(prompts)} prompts exceed max_prompts ({max_prompts})'
    for index, text in enumerate(prompts):
        if not text.strip():
            return f'prompt {index} is empty'
        if len(text) > MAX_PROMPT_CHARACTERS:
            return f'prompt {index} is longer than {MAX_PROMPT_CHARACTERS} characters'
    return None


def always_answers(handler):
    """Wrap a service handler so that any exception becomes a refusal with its reason."""
    @functools.wraps(handler)
    def answer(self, request, response):
        try:
            return handler(self, request, response)
        except Exception as error:  # an exception escaping a service would stop the executor
            self.get_logger().error(f'{handler.__name__} failed: {type(error).__name__}: {error}')
            response.success = False
            response.message = f'internal error: {type(error).__name__}: {error}'
            return response
    return answer


class ClipSegNode(LifecycleNode):
    """CLIPSeg segmentation as a ROS 2 lifecycle node named `clipseg`."""

    def __init__(self, node_name: str = 'clipseg',
                 engine_factory: Callable[..., ClipSegEngine] = ClipSegEngine, **kwargs):
        super().__init__(node_name, **kwargs)
        self._engine_factory = engine_factory
        self._engine: Optional[ClipSegEngine] = None
        self._engine_error = 'not configured'
        self._prompt_set = PromptSet()
        self._prompt_lock = threading.Lock()
        # Guards the pending frame; the worker thread waits on it for the next one.
        self._frame_ready = threading.Condition()
        # Held while a camera frame is processed, so cleanup never frees what the worker uses.
        self._worker_lock = threading.Lock()
        self._pending_frame = None       # newest unprocessed camera message
        self._latest_frame = None        # newest valid camera message, for ~/segment
        self._last_frame_time: Optional[float] = None
        self._last_process_start = -math.inf  # no frame yet: the first is never rate-limited
        self._counters = FrameCounters()
        self._cpu_threads = 0  # applied at configure
        self._warn_times = {}
        # Guards _configured against parameter changes racing a configure or cleanup.
        self._configuration_lock = threading.Lock()
        self._configured = False
        self._active = False
        self._worker: Optional[threading.Thread] = None
        self._subscription = None
        self._outputs = {}
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # The groups matter only where a multi-threaded executor spins the node (e.g. composed
        # into another process): services may then run beside the image callback.
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        # Diagnostics report in every lifecycle state, so they use a plain publisher.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            self.get_parameter('diagnostics_period').value, self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup())
        # Services exist in every state and say why they refuse while no model is loaded; being
        # there for the node's lifetime, cleanup never destroys one under an in-flight call.
        self._prompt_services = [
            self.create_service(SetTextPrompts, '~/set_text_prompts', self._on_set_text_prompts,
                                callback_group=self._service_group),
            self.create_service(SetImagePrompt, '~/set_image_prompt', self._on_set_image_prompt,
                                callback_group=self._service_group),
            self.create_service(Segment, '~/segment', self._on_segment,
                                callback_group=self._service_group),
        ]

    # ----------------------------------------------------------------- parameters
    def _declare_parameters(self) -> None:
        declare = self.declare_parameter
        # Configure-time parameters (CONFIGURE_TIME_PARAMETERS) are not read-only: a lifecycle
        # manager changes them while the node is unconfigured; the on-set callback refuses them
        # while it is configured.
        declare('model', DEFAULT_MODEL, _descriptor(
            'Hugging Face hub id or local folder (save_pretrained format, safetensors); '
            + AT_CONFIGURE))
        declare('device', 'auto', _descriptor(
            'auto (cuda when available), cpu, cuda or cuda:N; ' + AT_CONFIGURE))
        declare('dtype', 'auto', _descriptor(
            'auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16; '
            + AT_CONFIGURE))
        declare('compile_mode', 'auto', _descriptor(
            'GPU fast path: auto (cuda_graphs on CUDA, none on CPU), none or cuda_graphs; '
            + AT_CONFIGURE))
        declare('cpu_threads', 0, _descriptor(
            'Threads for CPU inference; 0 = auto (one per core, less one for ROS from 4 cores); '
            + AT_CONFIGURE, integer_range=(0, 1024, 1)))
        declare('threshold', 0.3, _descriptor(
            'Probability a prompt must reach for a pixel to get its label',
            float_range=(0.0, 1.0)))
        declare('resolution', 352, _descriptor(
            'Model input side in pixels (the frame is resized to resolution x resolution)',
            integer_range=(64, 1024, 16)))
        declare('prompts', ['object'], _descriptor(
            'Initial text prompts; change them at run time with ~/set_text_prompts; '
            + AT_CONFIGURE))
        declare('input_transport', 'raw', _descriptor(
            "raw: subscribe 'image' (sensor_msgs/Image); compressed: 'image/compressed'; "
            + AT_CONFIGURE, additional_constraints='raw or compressed'))
        declare('qos_reliability', 'best_effort', _descriptor(
            'Reliability of the image subscription: best_effort (sensor data) or reliable; '
            + AT_CONFIGURE, additional_constraints='best_effort or reliable'))
        declare('max_rate_hz', 0.0, _descriptor(
            'Upper bound on processed frames per second; 0 = as fast as the model allows',
            float_range=(0.0, 1000.0)))
        declare('publish_overlay', True, _descriptor(
            'Publish the rgb8 overlay image for operators'))
        declare('max_prompts', 16, _descriptor(
            'Most prompts accepted at once', integer_range=(1, MAX_PROMPTS_LIMIT, 1)))
        declare('max_image_pixels', 4096 * 4096, _descriptor(
            'Frames and support images with more pixels are refused before allocation',
            integer_range=(1, 10000 * 10000, 1)))
        declare('image_prompt_text_weight', 0.0, _descriptor(
            'Weight of the label text mixed into an image prompt embedding (0 = image only)',
            float_range=(0.0, 1.0)))
        declare('stale_image_timeout', 2.0, _descriptor(
            'Seconds without a camera frame before diagnostics warn', float_range=(0.1, 3600.0)))
        declare('diagnostics_period', 1.0, _descriptor(
            'Seconds between /diagnostics messages', read_only=True,
            float_range=(0.05, 60.0)))
        declare('autostart', True, _descriptor(
            'Configure and activate at start-up, so a plain launch works', read_only=True))

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _parameter_problem(self, name: str, value) -> str | None:
        """Why ``value`` is unacceptable for parameter ``name`` now, or None."""
        try:
            if name == 'model':
                if not value.strip():
                    return 'model must be a hub id or a model folder, not empty'
            elif name == 'device':
                check_device_name(value)
            elif name == 'dtype':
                check_dtype_name(value)
            elif name == 'compile_mode':
                check_compile_mode(value)
            elif name == 'cpu_threads':
                cpu_thread_count(value)
            elif name == 'prompts':
                return validate_text_prompts(list(value), self._param('max_prompts'))
            elif name in CHOICES:
                if value not in CHOICES[name]:
                    return f"'{value}' is not one of {', '.join(CHOICES[name])}"
            elif name == 'threshold':
                if not 0.0 <= value <= 1.0:  # False for NaN too
                    return 'threshold must be within [0, 1]'
            elif name == 'resolution':
                engine = self._engine
                if engine is not None:
                    engine.check_model_resolution(value)
                else:
                    check_resolution(value)
            elif name == 'max_prompts':
                current = len(self._prompt_set.prompts)
                if value < current:
                    return f'{current} prompts are in force; max_prompts cannot be lower'
        except ValueError as error:
            return str(error)
        return None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        # Validate every change first; apply only when all are accepted. Nothing may raise out
        # of here: it would end the executor's spin, and with it the node.
        try:
            with self._configuration_lock:
                for parameter in parameters:
                    if parameter.name in CONFIGURE_TIME_PARAMETERS and self._configured:
                        return SetParametersResult(successful=False, reason=(
                            f'{parameter.name} is read at configure and the node is '
                            'configured: cleanup, set it, then configure again'))
                    problem = self._parameter_problem(parameter.name, parameter.value)
                    if problem is not None:
                        return SetParametersResult(successful=False,
                                                   reason=f'{parameter.name}: {problem}')
                for parameter in parameters:
                    if parameter.name == 'resolution' and self._engine is not None:
                        self._engine.resolution = parameter.value
        except Exception as error:  # noqa: B902 - refused with the reason instead
            return SetParametersResult(
                successful=False,
                reason=f'cannot apply the change: {type(error).__name__}: {error}')
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._configuration_lock:
            # Values given at start-up (params file, overrides) never went through the on-set
            # callback, so every configure-time value is checked here.
            for name in sorted(CONFIGURE_TIME_PARAMETERS):
                problem = self._parameter_problem(name, self._param(name))
                if problem is not None:
                    self._engine_error = f'parameter {name}: {problem}'
                    self.get_logger().error(self._engine_error)
                    return TransitionCallbackReturn.FAILURE
            config = {name: self._param(name) for name in CONFIGURE_TIME_PARAMETERS}
            self._configured = True  # configure-time parameters are frozen from here on
        try:
            self._configure_from(config)
        except Exception as error:  # the transition must fail cleanly, whatever the cause
            self._release_resources()  # frees a model loaded before the failure
            self._engine_error = f'model not loaded: {error}'
            self.get_logger().error(self._engine_error)
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure_from(self, config: dict) -> None:
        """Load the model and create the topics; raises on any failure (the caller frees)."""
        prompts = list(config['prompts'])
        threads = set_cpu_threads(config['cpu_threads'])
        engine = self._engine_factory(
            model=config['model'], device=config['device'], dtype=config['dtype'],
            resolution=self._param('resolution'), compile_mode=config['compile_mode'])
        self._engine = engine  # from here on, a failure is cleaned up with the rest
        initial = engine.text_prompts(prompts)
        self._engine_error = ''
        self._cpu_threads = threads
        if config['device'] == 'auto' and engine.device.type == 'cpu':
            self.get_logger().warning('device auto: no CUDA device found, running on the CPU '
                                      '(expect seconds per frame with the full model)')
        with self._prompt_lock:
            self._prompt_set = PromptSet(tuple(initial), self._prompt_set.version + 1)
        self.get_logger().info(
            f"model '{config['model']}' on {engine.device} ({engine.dtype}, "
            f'{threads} CPU threads); prompts: {prompts}')

        self._outputs = {
            'mask': self.create_lifecycle_publisher(Image, 'mask', OUTPUT_QOS),
            'confidence': self.create_lifecycle_publisher(Image, 'confidence', OUTPUT_QOS),
            'overlay': self.create_lifecycle_publisher(Image, 'overlay', OUTPUT_QOS),
            'segmentation': self.create_lifecycle_publisher(Segmentation, 'segmentation',
                                                            OUTPUT_QOS),
        }
        input_qos = camera_qos(config['qos_reliability'])
        if config['input_transport'] == 'compressed':
            self._subscription = self.create_subscription(
                CompressedImage, 'image/compressed', self._on_image, input_qos,
                callback_group=self._input_group)
        else:
            self._subscription = self.create_subscription(
                Image, 'image', self._on_image, input_qos, callback_group=self._input_group)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # publishers first, so no first result is lost
        with self._frame_ready:
            self._pending_frame = None  # a frame from before activation is stale
            self._active = True
        # Inference runs on a thread of its own rather than as an executor callback: it holds
        # no executor thread for the length of an inference, sleeps on a condition variable
        # between frames, and deactivate can join it, so no frame is processed afterwards.
        self._worker = threading.Thread(target=self._worker_loop, name='clipseg_worker',
                                        daemon=True)
        self._worker.start()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        return super().on_deactivate(state)

    def _stop_worker(self) -> None:
        with self._frame_ready:
            self._active = False
            self._pending_frame = None
            self._frame_ready.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()  # at most one inference
        self._worker = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_resources()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release_resources()
        return TransitionCallbackReturn.SUCCESS

    def _release_resources(self) -> None:
        with self._worker_lock:
            self._release_resources_unlocked()

    def _release_resources_unlocked(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        with self._frame_ready:
            self._pending_frame = None
            self._latest_frame = None
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.release()  # waits for an inference in progress (engine lock)
        self._engine_error = 'not configured'
        # A reconfigured node starts its health report afresh: failures and the last frame
        # time belong to the configuration that was cleaned up.
        self._counters.forget_failures()
        self._last_frame_time = None
        self._warn_times.clear()
        with self._configuration_lock:
            self._configured = False

    def autostart_if_enabled(self) -> bool:
        """Configure and activate when the `autostart` parameter says so; return success."""
        if not self._param('autostart'):
            return True
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error('autostart: configure failed; the node stays unconfigured '
                                    'and can be configured again through its lifecycle services')
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ----------------------------------------------------------------- camera path
    def _warn_throttled(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warn_times.get(key, -math.inf) >= WARNING_THROTTLE_S:
            self._warn_times[key] = now
            self.get_logger().warning(text)

    def _validate_frame(self, msg) -> None:
        max_pixels = self._param('max_image_pixels')
        if isinstance(msg, CompressedImage):
            conversions.validate_compressed(msg, max_pixels)
        else:
            conversions.validate_image(msg, max_pixels)

    def _frame_to_rgb(self, msg) -> np.ndarray:
        max_pixels = self._param('max_image_pixels')
        if isinstance(msg, CompressedImage):
            return conversions.compressed_to_rgb(msg, max_pixels)
        return conversions.image_to_rgb(msg, max_pixels)

    def _on_image(self, msg) -> None:
        now = time.monotonic()
        counters = self._counters
        counters.received += 1
        counters.receive_times.append(now)
        self._last_frame_time = now
        try:
            self._validate_frame(msg)
        except ImageConversionError as error:
            counters.rejected += 1
            self._warn_throttled('frame', f'dropping camera frame: {error}')
            return
        with self._frame_ready:
            self._latest_frame = msg
            if not self._active:
                return  # kept for ~/segment only; not processed, not counted as dropped
            if self._pending_frame is not None:
                counters.dropped += 1
            self._pending_frame = (msg, now)
            self._frame_ready.notify()

    def _worker_loop(self) -> None:
        while True:
            with self._frame_ready:
                self._frame_ready.wait_for(lambda: self._pending_frame is not None or
                                           not self._active)
                if not self._active:
                    return
            with self._worker_lock:
                try:
                    self._process_one_frame()
                except Exception as error:  # the worker must outlive any one frame
                    self._count_failure(error)

    def _process_one_frame(self) -> None:
        """Convert, segment and publish the pending frame, if any."""
        if not self._active or self._engine is None:
            return
        max_rate = self._param('max_rate_hz')
        if max_rate > 0.0:
            wait = self._last_process_start + 1.0 / max_rate - time.monotonic()
            if wait > 0.0:  # a newer frame may arrive meanwhile; deactivate ends the wait
                with self._frame_ready:
                    self._frame_ready.wait_for(lambda: not self._active, timeout=wait)
        with self._frame_ready:
            pending, self._pending_frame = self._pending_frame, None
        if pending is None:
            return
        msg, received_at = pending
        self._last_process_start = time.monotonic()
        counters = self._counters
        try:
            image_rgb = self._frame_to_rgb(msg)
        except ImageConversionError as error:
            counters.rejected += 1
            self._warn_throttled('frame', f'dropping camera frame: {error}')
            return
        prompt_set = self._prompt_set
        engine = self._engine
        threshold = self._param('threshold')
        try:
            result = engine.segment(image_rgb, prompt_set.prompts, threshold=threshold)
        except Exception as error:  # one bad frame (OOM, driver error) must not stop the node
            self._count_failure(error)
            _free_device_cache(engine)
            return
        if not self._active:
            return
        self._publish_result(msg.header, image_rgb, result, prompt_set, threshold)
        done = time.monotonic()
        counters.processed += 1
        counters.last_latency_s = done - received_at
        counters.last_inference_s = result.inference_seconds
        counters.process_times.append(done)
        counters.consecutive_failures = 0

    def _count_failure(self, error: Exception) -> None:
        counters = self._counters
        counters.failed += 1
        counters.consecutive_failures += 1
        counters.last_error = f'{type(error).__name__}: {error}'
        self._warn_throttled('inference', f'frame dropped: {counters.last_error}')

    def _segmentation_msg(self, header: Header, result: SegmentationResult,
                          prompt_set: PromptSet, threshold: float):
        """Return the Segmentation message of one result."""
        stats = result.stats
        msg = Segmentation(header=header, prompt_version=prompt_set.version,
                           threshold=float(threshold), labels=prompt_set.labels)
        msg.max_confidence = [float(v) for v in result.max_confidence]
        msg.pixel_count = [int(v) for v in stats.pixel_count]
        msg.mean_confidence = [float(v) for v in stats.mean_confidence]
        msg.boxes = [RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w),
                                      height=int(h)) for x, y, w, h in stats.boxes]
        msg.centroids = [Point(x=float(x), y=float(y), z=0.0) for x, y in stats.centroids]
        msg.inference_time = float(result.inference_seconds)
        return msg

    def _publish_result(self, header: Header, image_rgb: np.ndarray, result: SegmentationResult,
                        prompt_set: PromptSet, threshold: float) -> None:
        publishers = self._outputs
        if not publishers:
            return
        segmentation = self._segmentation_msg(header, result, prompt_set, threshold)
        # Image outputs nobody listens to are not built: the overlay alone costs milliseconds.
        if publishers['mask'].get_subscription_count():
            publishers['mask'].publish(conversions.array_to_image(result.labels, 'mono8', header))
        if publishers['confidence'].get_subscription_count():
            publishers['confidence'].publish(
                conversions.array_to_image(result.confidence, '32FC1', header))
        publishers['segmentation'].publish(segmentation)
        if self._param('publish_overlay') and publishers['overlay'].get_subscription_count():
            overlay = render_overlay(image_rgb, result.labels, result.stats, prompt_set.labels)
            publishers['overlay'].publish(conversions.array_to_image(overlay, 'rgb8', header))

    # ----------------------------------------------------------------- services
    def _replace_prompts(self, prompts: Sequence[Prompt], append: bool) -> int:
        """Put prompts in force (after the current ones with append); return the version.

        Raises ValueError, changing nothing, when the result would exceed max_prompts.
        """
        with self._prompt_lock:  # check and replace at once: concurrent appends stay in bounds
            current = self._prompt_set.prompts if append else ()
            total = len(current) + len(prompts)
            if total > self._param('max_prompts'):
                raise ValueError(f'{total} prompts would exceed max_prompts '
                                 f"({self._param('max_prompts')})")
            self._prompt_set = PromptSet(tuple(current) + tuple(prompts),
                                         self._prompt_set.version + 1)
            return self._prompt_set.version

    @always_answers
    def _on_set_text_prompts(self, request, response):
        response.prompt_version = self._prompt_set.version
        prompts = list(request.prompts)
        engine = self._engine  # read once: cleanup may clear it meanwhile
        problem = validate_text_prompts(prompts, self._param('max_prompts'))
        if problem is None and engine is None:
            problem = f'the model is not loaded ({self._engine_error})'
        if problem is None:
            try:
                encoded = engine.text_prompts(prompts)
            except (ValueError, RuntimeError) as error:
                problem = f'cannot encode prompts: {error}'
        if problem is not None:
            response.success = False
            response.message = problem
            return response
        try:
            response.prompt_version = self._replace_prompts(encoded, append=False)
        except ValueError as error:  # max_prompts lowered meanwhile
            response.success = False
            response.message = str(error)
            return response
        response.success = True
        response.message = f'{len(encoded)} text prompt(s) in force: {prompts}'
        return response

    @always_answers
    def _on_set_image_prompt(self, request, response):
        response.prompt_version = self._prompt_set.version
        try:
            prompt = self._image_prompt_from_request(request)
        except (ValueError, RuntimeError) as error:
            response.success = False
            response.message = str(error)
            return response
        try:
            response.prompt_version = self._replace_prompts([prompt], append=request.append)
        except ValueError as error:
            response.success = False
            response.message = f'refused: {error}'
            return response
        response.success = True
        response.message = (f"image prompt '{prompt.label}' "
                            f"{'appended' if request.append else 'in force'}")
        return response

    def _image_prompt_from_request(self, request) -> Prompt:
        engine = self._engine
        if engine is None:
            raise ValueError(f'the model is not loaded ({self._engine_error})')
        if len(request.label) > MAX_PROMPT_CHARACTERS:
            raise ValueError(f'label is longer than {MAX_PROMPT_CHARACTERS} characters')
        max_pixels = self._param('max_image_pixels')
        try:
            support = conversions.image_to_rgb(request.image, max_pixels)
        except ImageConversionError as error:
            raise ValueError(f'support image: {error}') from error
        mask = None
        if request.mask.width != 0 or request.mask.height != 0 or len(request.mask.data) != 0:
            try:
                mask = conversions.mask_from_image(request.mask, max_pixels)
            except ImageConversionError as error:
                raise ValueError(f'mask: {error}') from error
            if mask.shape != support.shape[:2]:
                raise ValueError(f'mask is {mask.shape[1]}x{mask.shape[0]} but the support '
                                 f'image is {support.shape[1]}x{support.shape[0]}')
            if not mask.any():
                raise ValueError('mask selects no pixel: mark the object with nonzero values')
        label = request.label.strip() or f'image_prompt_{self._prompt_set.version + 1}'
        text_weight = self._param('image_prompt_text_weight')
        text = label if text_weight > 0.0 and request.label.strip() else None
        return engine.image_prompt(support, mask, label=label, text=text,
                                   text_weight=text_weight if text else 0.0)

    @always_answers
    def _on_segment(self, request, response):
        response.success = False
        engine = self._engine
        if engine is None:
            response.message = f'the model is not loaded ({self._engine_error})'
            return response
        prompt_set = self._prompt_set
        if len(request.prompts) > 0:  # one-off prompts for this call; the set in force stays
            problem = validate_text_prompts(list(request.prompts), self._param('max_prompts'))
            if problem is not None:
                response.message = problem
                return response
            try:
                prompts = engine.text_prompts(list(request.prompts))
            except (ValueError, RuntimeError) as error:
                response.message = f'cannot encode prompts: {error}'
                return response
            prompt_set = PromptSet(tuple(prompts), version=0)  # 0: not a prompt set in force
        if not prompt_set.prompts:
            response.message = 'no prompts in force'
            return response
        max_pixels = self._param('max_image_pixels')
        try:
            if request.image.width == 0 and request.image.height == 0 and \
                    len(request.image.data) == 0:
                latest = self._latest_frame
                if latest is None:
                    response.message = 'no image given and no camera frame received yet'
                    return response
                header = latest.header
                image_rgb = self._frame_to_rgb(latest)
            else:
                header = request.image.header
                image_rgb = conversions.image_to_rgb(request.image, max_pixels)
        except ImageConversionError as error:
            response.message = f'image: {error}'
            return response
        threshold = self._param('threshold')
        try:
            result = engine.segment(image_rgb, prompt_set.prompts, threshold=threshold)
        except Exception as error:  # answer with the reason instead of failing the call
            _free_device_cache(engine)
            response.message = f'inference failed: {type(error).__name__}: {error}'
            return response
        response.segmentation = self._segmentation_msg(header, result, prompt_set, threshold)
        response.mask = conversions.array_to_image(result.labels, 'mono8', header)
        response.confidence = conversions.array_to_image(result.confidence, '32FC1', header)
        response.success = True
        response.message = f'segmented {image_rgb.shape[1]}x{image_rgb.shape[0]} with ' \
                           f'{len(prompt_set.prompts)} prompt(s)'
        return response

    # ----------------------------------------------------------------- diagnostics
    @property
    def counters(self) -> FrameCounters:
        return self._counters

    @property
    def prompt_set(self) -> PromptSet:
        return self._prompt_set

    def diagnostic_status(self) -> DiagnosticStatus:
        """Build the node's DiagnosticStatus (level, message and key/values)."""
        now = time.monotonic()
        counters = self._counters
        engine = self._engine
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: segmentation',
                                  hardware_id=str(engine.device) if engine else '')
        if engine is None:
            status.level = DiagnosticStatus.ERROR
            status.message = self._engine_error or 'model not loaded'
        elif not self._active:
            status.level = DiagnosticStatus.OK
            status.message = 'inactive'
        elif self._last_frame_time is None or \
                now - self._last_frame_time > self._param('stale_image_timeout'):
            status.level = DiagnosticStatus.WARN
            status.message = 'no camera frame received recently'
        elif counters.consecutive_failures >= FAILURES_BEFORE_ERROR:
            status.level = DiagnosticStatus.ERROR
            status.message = (f'the last {counters.consecutive_failures} frames failed: '
                              f'{counters.last_error}')
        elif counters.failed and counters.last_error:
            status.level = DiagnosticStatus.OK
            status.message = f'running; last inference error: {counters.last_error}'
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'running'
        age = 'never' if self._last_frame_time is None else \
            f'{now - self._last_frame_time:.3f}'
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
            'device': str(engine.device) if engine else 'none',
            'cpu_threads': str(self._cpu_threads),
            'device_memory_bytes': str(engine.memory_in_use() if engine else 0),
            'prompt_count': str(len(self._prompt_set.prompts)),
            'prompt_version': str(self._prompt_set.version),
            'model': self._param('model'),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def destroy_node(self) -> None:
        """Stop the worker before the publishers it uses are destroyed."""
        self._stop_worker()
        super().destroy_node()

    def _publish_diagnostics(self) -> None:
        try:
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            array.status = [self.diagnostic_status()]
            self._diagnostics_pub.publish(array)
        except Exception as error:  # a timer callback that raises ends the executor's spin
            self._warn_throttled('diagnostics', f'diagnostics not published: '
                                 f'{type(error).__name__}: {error}')


def _free_device_cache(engine) -> None:
    try:
        engine.free_cache()
    except Exception:  # freeing a cache must never raise into the caller
        pass


# Image-sized buffers (0.3-4 MB a message) are allocated and freed for every frame. With glibc's
# defaults the freed memory goes back to the kernel and is faulted in again on the next frame: a
# minimal rclpy echo of 1280x720 frames took 2,220 page faults and 5.5-6.5 ms of kernel CPU a
# frame, against 0.4 faults and 0.4-0.5 ms with these settings (bench/transport_bench.py). The
# same advice as ROS 2's real-time guidance; RSS then stays at its high-water mark.
MALLOC_MMAP_THRESHOLD_BYTES = 64 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 256 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve image buffers from the heap and keep what is freed there.

    Call once at process start (clipseg_node's main does). Returns False where the C library
    has no mallopt (not glibc), changing nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES))


def main(args=None, engine_factory: Callable[..., ClipSegEngine] = ClipSegEngine) -> None:
    """Run the clipseg node until shut down (`engine_factory`: for benchmarks of the node).

    Every start-up error (a parameters file that is missing or not valid YAML, a bad remap or
    other argument, a node that cannot be constructed) ends the process with one FATAL line and
    exit status 1, never a traceback: launch shows that line as the reason the node died.
    """
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
        rclpy.init(args=args)
    except Exception as error:
        refuse(error)
    finally:
        if rclpy.logging.get_logger_level('rcl') == rclpy.logging.LoggingSeverity.FATAL:
            rclpy.logging.set_logger_level('rcl', rcl_level)  # unless --log-level set it
    try:
        node = ClipSegNode(engine_factory=engine_factory)
    except KeyboardInterrupt:  # stopped while the model was loading
        rclpy.try_shutdown()
        return
    except Exception as error:  # e.g. a parameter file value of the wrong type
        rclpy.try_shutdown()
        refuse(error)
    # Inference on camera frames has a thread of its own (the worker); the executor runs the
    # other callbacks. rclpy's MultiThreadedExecutor costs far more than it saves here: in a
    # pass-through node echoing 640x480 frames at 30 Hz it delivered 32 of 150 (p50 122 ms),
    # this one 150 of 150 (p50 6.6 ms).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        try:
            node.autostart_if_enabled()
        except ExternalShutdownException:
            raise
        except Exception as error:  # unexpected: a model that fails to load is only logged
            refuse(error)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
