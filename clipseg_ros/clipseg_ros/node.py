"""The clipseg lifecycle node: camera frames in, mask / confidence / overlay / segmentation out.

The node wires the parts together: parameters (parameters.py), each camera's topics
(camera_pipeline.py), the scheduler that keeps every camera's newest frame and serves the
cameras in turn on one worker thread (frame_slot.py), the engine and prompt set all cameras
share, the services (prompt_services.py) and diagnostics (diagnostics.py). An image callback
only validates and offers the frame; the worker converts, segments and publishes, so services
answer while a frame is processed and a slow model drops frames instead of queueing them.
"""

from collections.abc import Callable
import math
import threading
import time

from clipseg_ros import conversions
from clipseg_ros.camera_names import camera_names_problem
from clipseg_ros.camera_pipeline import CameraPipeline, refinement_depths
from clipseg_ros.conversions import ImageConversionError
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.options import set_cpu_threads
from clipseg_ros.diagnostics import CameraHealth, EngineHealth, node_statuses
from clipseg_ros.engine_setup import forward_core_logs, int8_calibration
from clipseg_ros.frame_slot import FrameCounters, FrameScheduler, Job
from clipseg_ros.objects import CameraObjects
from clipseg_ros.parameters import (
    CONFIGURE_TIME_PARAMETERS, declare_parameters, NodeConfiguration, parameter_problem,
    refine_settings)
from clipseg_ros.prompt_services import PromptBook, PromptServices, ServiceContext
from clipseg_ros.publishers import PromptSet
from clipseg_ros.segmented_frames import object_settings, SegmentedFrame, SegmentedFrames
from clipseg_ros.teach_services import TeachContext, TeachServices
from clipseg_ros_interfaces.srv import Forget, Segment, SetImagePrompt, SetTextPrompts, Teach
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

WARNING_THROTTLE_S = 5.0


def free_device_cache(engine: ClipSegEngine) -> None:
    """Return cached GPU memory after a failure; never raises into the caller."""
    try:
        engine.free_cache()
    except Exception:  # noqa: B902 - freeing a cache must not turn one failure into two
        pass


class ClipSegNode(LifecycleNode):
    """CLIPSeg segmentation as a ROS 2 lifecycle node named `clipseg`."""

    def __init__(self, node_name: str = 'clipseg',
                 engine_factory: Callable[..., ClipSegEngine] = ClipSegEngine, **kwargs):
        super().__init__(node_name, **kwargs)
        self._engine_factory = engine_factory
        self._engine: ClipSegEngine | None = None
        self._engine_error = 'not configured'
        self._prompts = PromptBook()
        self._worker = FrameScheduler(self._process_frames, self._count_failures,
                                      self._min_frame_interval,
                                      batch=lambda: self._param('batch_cameras'),
                                      inputs_ready=self._frame_inputs_ready,
                                      input_wait=lambda: self._param('depth_wait'),
                                      on_input_timeout=self._frame_inputs_timed_out)
        self._cameras: dict[str, CameraPipeline] = {}  # created at configure
        # Instances and tracks per camera, kept for the node's life: track ids are never reused.
        self._objects: dict[str, CameraObjects] = {}
        # Each camera's last published frame: ~/segment on it answers from it, clicks teach on it.
        self._segmented = SegmentedFrames()
        self._cpu_threads = 0  # applied at configure
        self._warn_times: dict[str, float] = {}
        # Guards _configured against parameter changes racing a configure or cleanup.
        self._configuration_lock = threading.Lock()
        self._configured = False
        declare_parameters(self)
        if camera_names_problem(list(self._param('cameras'))) is None:  # else configure says
            self._worker.set_cameras(self._param('cameras'))  # diagnostics name them at once
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # The groups matter only where a multi-threaded executor spins the node (e.g. composed
        # into another process): services may then run beside the image callback.
        self._input_group = MutuallyExclusiveCallbackGroup()
        services_group = ReentrantCallbackGroup()
        # Diagnostics report in every lifecycle state, so they use a plain publisher.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(
            self._param('diagnostics_period'), self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup())
        self._service_handlers = PromptServices(ServiceContext(
            engine=lambda: self._engine, engine_error=lambda: self._engine_error,
            parameter=self._param, cameras=lambda: self._worker.cameras,
            latest_frame=self._worker.latest, frame_to_rgb=self._frame_to_rgb,
            free_device_cache=free_device_cache, log_error=self.get_logger().error,
            objects=lambda camera, *frame: self._objects[camera].match(*frame),
            segmented=self._segmented_latest,
            depth_targets=lambda camera, *frame: (
                self._cameras[camera].depth_targets(*frame) if camera in self._cameras
                else None)), self._prompts)
        self._teaching = TeachServices(TeachContext(
            engine=lambda: self._engine, engine_error=lambda: self._engine_error,
            parameter=self._param, cameras=lambda: self._worker.cameras,
            active=lambda: self._worker.active, log_info=self.get_logger().info,
            log_warning=self.get_logger().warning, log_error=self.get_logger().error),
            self._prompts, self._segmented)
        # Services exist in every state and say why they refuse while no model is loaded; being
        # there for the node's lifetime, cleanup never destroys one under an in-flight call.
        for service_type, name, callback in (
                (SetTextPrompts, '~/set_text_prompts', self._service_handlers.set_text_prompts),
                (SetImagePrompt, '~/set_image_prompt', self._service_handlers.set_image_prompt),
                (Segment, '~/segment', self._service_handlers.segment),
                (Teach, '~/teach', self._teaching.teach),
                (Forget, '~/forget', self._teaching.forget)):
            self.create_service(service_type, name, callback, callback_group=services_group)

    def _param(self, name: str):
        return self.get_parameter(name).value

    @property
    def counters(self) -> FrameCounters:
        """The first camera's frame counters (the only camera's, by default)."""
        return self._worker.counters(self._worker.cameras[0])

    def camera_counters(self, camera: str) -> FrameCounters:
        return self._worker.counters(camera)

    def camera(self, name: str = '') -> CameraPipeline | None:
        """The topics of a configured camera, or None."""
        return self._cameras.get(name)

    @property
    def prompt_set(self) -> PromptSet:
        return self._prompts.current

    # ----------------------------------------------------------------- parameters
    def _problem(self, name: str, value) -> str | None:
        engine = self._engine
        return parameter_problem(
            name, value, max_prompts=self._param('max_prompts'),
            prompts_in_force=len(self._prompts.current.prompts),
            check_model_resolution=engine.check_model_resolution if engine else None,
            int8_resolution=engine.resolution if engine and engine.quantized else None)

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
                    problem = self._problem(parameter.name, parameter.value)
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
                problem = self._problem(name, self._param(name))
                if problem is not None:
                    self._engine_error = f'parameter {name}: {problem}'
                    self.get_logger().error(self._engine_error)
                    return TransitionCallbackReturn.FAILURE
            config = NodeConfiguration.read(self._param)
            self._configured = True  # configure-time parameters are frozen from here on
        try:
            self._configure_from(config)
        except Exception as error:  # the transition must fail cleanly, whatever the cause
            self._release_resources()  # frees a model loaded before the failure
            self._engine_error = f'model not loaded: {error}'
            self.get_logger().error(self._engine_error)
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure_from(self, config: NodeConfiguration) -> None:
        """Load the model and create the topics; raises on any failure (the caller frees)."""
        threads = set_cpu_threads(config.cpu_threads)
        with forward_core_logs(self.get_logger()):  # int8 says what it quantizes
            engine = self._engine_factory(
                model=config.model, device=config.device, dtype=config.dtype,
                resolution=self._param('resolution'), compile_mode=config.compile_mode,
                backend=config.backend, compiled_model_cache=config.compiled_model_cache,
                int8_calibration=int8_calibration(config.dtype, config.int8_calibration))
        self._engine = engine  # from here on, a failure is cleaned up with the rest
        initial = engine.text_prompts(list(config.prompts))
        self._engine_error = ''
        self._cpu_threads = threads
        if config.device == 'auto' and engine.device.type == 'cpu':
            self.get_logger().warning('device auto: no CUDA device found, running on the CPU '
                                      '(expect seconds per frame with the full model)')
        self._prompts.replace(initial, append=False, max_prompts=len(initial))
        self.get_logger().info(
            f"model '{config.model}' on {engine.device} ({engine.dtype}, {threads} CPU "
            f'threads); prompts: {list(config.prompts)}; runtime: {engine.runtime_summary}')
        self._worker.set_cameras(config.cameras)
        for name in config.cameras:
            self._objects.setdefault(name, CameraObjects(self._param)).reset()
            self._cameras[name] = CameraPipeline(
                self, name, compressed=config.input_transport == 'compressed',
                reliability=config.qos_reliability, use_depth=config.use_depth,
                callback_group=self._input_group, counters=self._worker.counters(name),
                offer=self._worker.offer, max_pixels=lambda: self._param('max_image_pixels'),
                warn=self._warn_throttled, depth_arrived=self._worker.input_arrived,
                on_click=self._teaching.on_click)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # publishers first, so no first result is lost
        self._worker.start()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._worker.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_resources()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._worker.stop()
        self._release_resources()
        return TransitionCallbackReturn.SUCCESS

    def _release_resources(self) -> None:
        with self._worker.processing:
            cameras, self._cameras = self._cameras, {}
            for camera in cameras.values():
                camera.destroy()
            self._worker.clear()
            self._segmented.clear()
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.release()  # waits for an inference in progress (engine lock)
            self._engine_error = 'not configured'
            # A reconfigured node starts its health report afresh: failures and the last frame
            # time belong to the configuration that was cleaned up.
            for name in self._worker.cameras:
                self._worker.counters(name).forget_failures()
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

    def destroy_node(self) -> None:
        """Stop the worker and release the model before the entities they use are destroyed."""
        self._worker.stop()
        self._release_resources()
        super().destroy_node()

    # ----------------------------------------------------------------- camera path
    def _warn_throttled(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warn_times.get(key, -math.inf) >= WARNING_THROTTLE_S:
            self._warn_times[key] = now
            self.get_logger().warning(text)

    def _frame_to_rgb(self, msg) -> np.ndarray:
        return conversions.frame_to_rgb(msg, self._param('max_image_pixels'))

    def _frame_inputs_ready(self, camera: str, msg) -> bool:
        """Whether a camera's frame may go now (its depth is there or not needed)."""
        pipeline = self._cameras.get(camera)
        return pipeline is None or pipeline.inputs_ready(msg)

    def _frame_inputs_timed_out(self, camera: str, msg, received_at: float,
                                waited_s: float) -> None:
        pipeline = self._cameras.get(camera)
        if pipeline is not None:
            pipeline.inputs_timed_out(msg, received_at, waited_s)

    def _min_frame_interval(self) -> float:
        max_rate = self._param('max_rate_hz')
        return 1.0 / max_rate if max_rate > 0.0 else 0.0

    def _process_frames(self, jobs: list[Job]) -> None:
        """Convert, segment (one encoder pass for all) and publish camera frames (worker)."""
        engine, frames = self._engine, []
        for name, msg, received_at in jobs:
            camera = self._cameras.get(name)
            if engine is None or camera is None:
                continue  # cleaned up meanwhile
            try:
                frames.append((camera, msg, received_at, self._frame_to_rgb(msg)))
            except ImageConversionError as error:
                self._worker.counters(name).rejected += 1
                camera.warn('frame', f'dropping camera frame: {error}')
        if frames and not self._segment_and_publish(engine, frames) and len(frames) > 1:
            for frame in frames:  # a batch the device cannot take: one frame at a time
                self._segment_and_publish(engine, [frame])

    def _segment_and_publish(self, engine: ClipSegEngine, frames: list) -> bool:
        """Segment frames in one batch and publish each; False when the inference failed."""
        prompt_set, threshold = self._prompts.current, self._param('threshold')
        refine = refine_settings(self._param)
        paired_depths = refinement_depths(frames, refine)  # the 3D targets use them too
        try:
            results = engine.segment_batch(
                [frame[3] for frame in frames], prompt_set.prompts, threshold=threshold,
                refine=refine, depths_m=[paired and paired.depth_m for paired in paired_depths])
        except Exception as error:  # one bad frame (OOM, driver error) must not stop the node
            free_device_cache(engine)
            if len(frames) > 1:  # retried frame by frame, where a failure is counted
                self._warn_throttled('batch', f'a batch of {len(frames)} frames failed '
                                     f'({type(error).__name__}: {error}); one at a time')
            else:
                self._count_failures([(c.name, msg, t) for c, msg, t, _ in frames], error)
            return False
        for (camera, msg, received_at, image_rgb), result, paired_depth in zip(
                frames, results, paired_depths):
            if not self._worker.active:
                break
            try:  # one camera's failure leaves the others' results alone
                # Read before they are used: a change meanwhile then only costs a reuse.
                settings = object_settings(self._param)
                paired = camera.depth_targets(msg.header, result.labels,
                                              len(prompt_set.prompts), paired_depth)
                objects = self._objects[camera.name].update(msg.header, result, paired,
                                                            prompt_set, image_rgb)
                # Before publishing: whoever saw the outputs may teach or ask ~/segment on it.
                self._segmented.remember(camera.name, SegmentedFrame(
                    msg, prompt_set, threshold, engine.resolution, refine, result, paired,
                    objects, image_rgb, settings))
                camera.outputs.publish(
                    msg.header, image_rgb, result, prompt_set, threshold,
                    with_overlay=self._param('publish_overlay'), paired=paired,
                    objects=objects, point_decimation=self._param('point_decimation'))
            except Exception as error:  # noqa: B902 - counted and logged per camera
                self._count_failures([(camera.name, msg, received_at)], error)
                continue
            self._worker.counters(camera.name).count_processed(received_at,
                                                               result.inference_seconds)
        return True

    def _segmented_latest(self, camera: str, threshold: float) -> SegmentedFrame | None:
        """The worker's result for the camera's latest frame, if made with the prompts, the
        ``threshold``, resolution, refinement and object settings in force now."""
        engine = self._engine
        if engine is None:
            return None
        return self._segmented.find(camera, self._worker.latest(camera), self._prompts.current,
                                    threshold, engine.resolution, refine_settings(self._param),
                                    object_settings(self._param))

    def _count_failures(self, jobs: list[Job], error: Exception) -> None:
        for name, _, _ in jobs:
            description = self._worker.counters(name).count_failure(error)
            pipeline = self._cameras.get(name)
            (pipeline.warn if pipeline else self._warn_throttled)(
                'inference', f'frame dropped: {description}')

    # ----------------------------------------------------------------- diagnostics
    def diagnostic_statuses(self) -> list[DiagnosticStatus]:
        """The node's DiagnosticStatus entries: one, or the engine's and one per camera."""
        now, prompt_set = time.monotonic(), self._prompts.current
        health = EngineHealth.of(self._engine, self._engine_error, self._worker.active,
                                 self._cpu_threads, len(prompt_set.prompts), prompt_set.version,
                                 self._param('model'))
        cameras = [CameraHealth.of(name, self._worker.counters(name), self._cameras.get(name),
                                   self._param('stale_image_timeout'), now)
                   for name in self._worker.cameras]
        return node_statuses(self.get_fully_qualified_name(), health, cameras, now)

    def diagnostic_status(self) -> DiagnosticStatus:
        """The first status: the single camera's, or with named cameras the engine's."""
        return self.diagnostic_statuses()[0]

    def _publish_diagnostics(self) -> None:
        try:
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            array.status = self.diagnostic_statuses()
            self._diagnostics_pub.publish(array)
        except Exception as error:  # a timer callback that raises ends the executor's spin
            self._warn_throttled('diagnostics', f'diagnostics not published: '
                                 f'{type(error).__name__}: {error}')
