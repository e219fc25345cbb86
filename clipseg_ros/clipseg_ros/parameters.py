"""
The clipseg node's parameters: one table of declarations with descriptors, one validation used
by the on-set callback and by configure, and the typed configuration read at configure.

The rules come from the engine's own checks (options, MAX_PROMPTS), so node and engine cannot
disagree on what is valid.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clipseg_ros.camera_names import camera_names_problem
from clipseg_ros.core.backends import AUTO_CACHE, check_backend_name
from clipseg_ros.core.model_loading import DEFAULT_MODEL
from clipseg_ros.core.options import (
    check_compile_mode, check_device_name, check_dtype_name, check_resolution,
    cpu_thread_count, MAX_RESOLUTION, MODEL_RESOLUTION, RESOLUTION_STEP)
from clipseg_ros.core.prompts import MAX_PROMPTS
from clipseg_ros.core.refine import REFINE_METHODS, RefineSettings
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

MAX_PROMPT_CHARACTERS = 300
# When a parameter takes effect.
LIVE = 'live'            # at once, validated
CONFIGURE = 'configure'  # read at configure; changeable only while unconfigured
START = 'start'          # fixed for the life of the process
CHOICES = {'input_transport': ('raw', 'compressed'),
           'qos_reliability': ('auto', 'best_effort', 'reliable'),
           'refine': REFINE_METHODS}


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: its default, what it means, when it takes effect and its range."""

    name: str
    default: Any
    description: str
    when: str = LIVE
    float_range: tuple[float, float] | None = None
    integer_range: tuple[int, int, int] | None = None

    def descriptor(self) -> ParameterDescriptor:
        suffix = {CONFIGURE: '; read at configure (change it while unconfigured)',
                  START: '; fixed at start-up'}.get(self.when, '')
        descriptor = ParameterDescriptor(
            description=self.description + suffix, read_only=self.when == START,
            additional_constraints=' or '.join(CHOICES.get(self.name, ())))
        if self.float_range is not None:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.float_range[0]), to_value=float(self.float_range[1]),
                step=0.0)]
        if self.integer_range is not None:
            low, high, step = self.integer_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
        return descriptor


SPECS = (
    ParameterSpec('model', DEFAULT_MODEL, 'Hugging Face hub id or local folder '
                  '(save_pretrained format, safetensors)', CONFIGURE),
    ParameterSpec('device', 'auto', 'auto (cuda when available), cpu, cuda or cuda:N',
                  CONFIGURE),
    ParameterSpec('dtype', 'auto', 'auto (float16 on CUDA; on the CPU bfloat16 where it '
                  'computes it natively, AMX or AVX-512 BF16, else float32), float32, float16, '
                  'bfloat16 or int8 (openvino back end, a CPU with VNNI or AMX-INT8)',
                  CONFIGURE),
    ParameterSpec('int8_calibration', '', "Folder of the robot's own camera frames that "
                  "dtype int8 is quantized from (up to 64 used); '' = the package's synthetic "
                  'scenes', CONFIGURE),
    ParameterSpec('backend', 'auto', 'Runtime of the network: auto (torch on CUDA, openvino '
                  'on the CPU when installed), torch or openvino', CONFIGURE),
    ParameterSpec('compiled_model_cache', AUTO_CACHE, 'Folder for converted models (openvino '
                  "back end): auto = $XDG_CACHE_HOME/clipseg_ros or ~/.cache/clipseg_ros; '' "
                  '= no cache', CONFIGURE),
    ParameterSpec('compile_mode', 'auto', 'GPU fast path: auto (cuda_graphs on CUDA, none on '
                  'CPU), none or cuda_graphs', CONFIGURE),
    ParameterSpec('cpu_threads', 0, "Threads for CPU inference and the frame's OpenCV work; 0 = "
                  'auto (one per core, less one for ROS from 4 cores)', CONFIGURE,
                  integer_range=(0, 1024, 1)),
    ParameterSpec('threshold', 0.3, 'Probability a prompt must reach for a pixel to get its '
                  'label (1 labels nothing)', float_range=(0.0, 1.0)),
    ParameterSpec('refine', 'guided', 'Refinement of the probability maps at the frame\'s size '
                  'before the threshold: guided (a guided filter by the frame\'s colour, so '
                  'masks follow the edges: docs/refinement.md) or none (bilinear only)'),
    ParameterSpec('refine_radius', 0.5, 'Radius of the refinement filter as a fraction of one '
                  "model patch's footprint on the frame: larger follows edges further from the "
                  "model's border", float_range=(0.05, 2.0)),
    ParameterSpec('refine_epsilon', 0.001, 'Colour variance (colour in [0, 1]) below which the '
                  'refinement ignores an edge: larger keeps the bilinear border more',
                  float_range=(1e-6, 1.0)),
    ParameterSpec('refine_depth_weight', 0.0, 'Weight of aligned depth in the refinement\'s '
                  'guide, per metre (0 = colour only); used when depth is paired with the frame '
                  'before inference', float_range=(0.0, 100.0)),
    ParameterSpec('resolution', MODEL_RESOLUTION, 'Model input side in pixels (the frame is '
                  "resized to resolution x resolution); 0 = the model's own input size",
                  integer_range=(MODEL_RESOLUTION, MAX_RESOLUTION, RESOLUTION_STEP)),
    ParameterSpec('prompts', ['object'], 'Initial text prompts; change them at run time with '
                  '~/set_text_prompts', CONFIGURE),
    ParameterSpec('cameras', [''], "Names of the cameras served with one model: camera c reads "
                  "c/image and publishes c/mask, ...; [''] = one camera with the plain names",
                  CONFIGURE),
    ParameterSpec('input_transport', 'raw', "raw: subscribe 'image' (sensor_msgs/Image); "
                  "compressed: 'image/compressed'", CONFIGURE),
    ParameterSpec('qos_reliability', 'auto', 'Reliability of the image, depth and camera_info '
                  'subscriptions: auto = reliable when every publisher of the topic offers '
                  'reliable, else best effort, followed as publishers come and go; best_effort '
                  '(matches every publisher) or reliable (best-effort publishers are refused, '
                  'with a warning)', CONFIGURE),
    ParameterSpec('max_rate_hz', 0.0, 'Upper bound on processed frames per second of each '
                  'camera; 0 = as fast as the model allows', float_range=(0.0, 1000.0)),
    ParameterSpec('batch_cameras', True, 'Frames waiting from several cameras go through the '
                  'model as one batch (faster than one by one: docs/cameras.md)'),
    ParameterSpec('publish_overlay', True, 'Publish the rgb8 overlay image for operators'),
    ParameterSpec('max_prompts', 16, 'Most prompts accepted at once',
                  integer_range=(1, MAX_PROMPTS, 1)),
    ParameterSpec('max_image_pixels', 4096 * 4096, 'Frames and support images with more '
                  'pixels are refused before allocation', integer_range=(1, 10000 * 10000, 1)),
    ParameterSpec('image_prompt_text_weight', 0.0, 'Weight of the label text mixed into an '
                  'image prompt embedding (0 = image only)', float_range=(0.0, 1.0)),
    ParameterSpec('stale_image_timeout', 2.0, 'Seconds without a camera frame before '
                  'diagnostics warn', float_range=(0.1, 3600.0)),
    ParameterSpec('use_depth', False, 'Subscribe depth (registered to the colour image) and '
                  'camera_info, and publish 3D targets, points and markers', CONFIGURE),
    ParameterSpec('depth_max_delay', 0.02, 'Seconds a depth image may be from its colour '
                  "frame's stamp to be paired with it", float_range=(0.0, 1.0)),
    ParameterSpec('depth_wait', 0.1, 'Seconds a colour frame waits for its depth image (and '
                  'a camera_info) before it is segmented without depth; 0 = no wait',
                  float_range=(0.0, 5.0)),
    ParameterSpec('max_depth', 10.0, 'Depth beyond this many metres counts as no reading',
                  float_range=(0.05, 1000.0)),
    ParameterSpec('depth_erosion_px', 2, "Pixels eroded off each prompt's mask before its 3D "
                  'centroid, so edge pixels that see the background do not pull it',
                  integer_range=(0, 50, 1)),
    ParameterSpec('point_decimation', 4, 'Every n-th row and column of the masked pixels goes '
                  'into the points cloud', integer_range=(1, 64, 1)),
    ParameterSpec('min_instance_pixels', 50, "Connected parts of a prompt's region with fewer "
                  'pixels are specks, not instances', integer_range=(1, 1_000_000, 1)),
    ParameterSpec('instance_depth_gap', 0.05, 'Metres of depth jump that split a part of a '
                  'prompt\'s region into two instances; 0 = no split by depth',
                  float_range=(0.0, 10.0)),
    ParameterSpec('max_instances_per_prompt', 10, 'Instances kept per prompt (the best '
                  'scoring)', integer_range=(1, 255, 1)),
    ParameterSpec('tracking', True, 'Give instances track ids that last across frames (false: '
                  'instances only, track_id 0)'),
    ParameterSpec('track_max_missed_frames', 10, 'Frames a track may go unseen (occlusion, '
                  'flicker) before it is lost', integer_range=(0, 1000, 1)),
    ParameterSpec('track_min_frames', 3, 'Frames in a row an object must be seen before its '
                  'track is reported (1 = at once)', integer_range=(1, 100, 1)),
    ParameterSpec('track_smoothing', 0.5, "Weight of each frame's 3D centroid in a track's "
                  'smoothed one (alpha-beta filter; 1 = no smoothing)', float_range=(0.01, 1.0)),
    ParameterSpec('track_gate', 0.1, 'Metres an instance may be from a track\'s predicted 3D '
                  'centroid to continue it', float_range=(0.001, 10.0)),
    ParameterSpec('teach_label_prefix', 'taught_', 'Label of a prompt taught by a click or by '
                  '~/teach without a label: this prefix and a count'),
    ParameterSpec('teach_depth_gap', 0.01, 'Metres of depth jump that bound the surface a '
                  'click teaches (with depth, where no instance covers the pixel)',
                  float_range=(0.001, 1.0)),
    ParameterSpec('track_reid_seconds', 10.0, 'Seconds a lost track is remembered: an object '
                  'that comes back looking like it (colour) gets its id back; 0 = never',
                  float_range=(0.0, 3600.0)),
    ParameterSpec('diagnostics_period', 1.0, 'Seconds between /diagnostics messages', START,
                  float_range=(0.05, 60.0)),
    ParameterSpec('autostart', True, 'Configure and activate at start-up, so a plain launch '
                  'works', START),
)
CONFIGURE_TIME_PARAMETERS = frozenset(spec.name for spec in SPECS if spec.when == CONFIGURE)


@dataclass(frozen=True)
class NodeConfiguration:
    """The configure-time parameters, read once at configure."""

    model: str
    device: str
    dtype: str
    int8_calibration: str
    backend: str
    compiled_model_cache: str
    compile_mode: str
    cpu_threads: int
    prompts: tuple[str, ...]
    cameras: tuple[str, ...]
    input_transport: str
    qos_reliability: str
    use_depth: bool

    @classmethod
    def read(cls, value_of: Callable[[str], Any]) -> 'NodeConfiguration':
        values = {name: value_of(name) for name in CONFIGURE_TIME_PARAMETERS}
        values['prompts'] = tuple(values['prompts'])
        values['cameras'] = tuple(values['cameras'])
        return cls(**values)


_DEFAULTS = {spec.name: spec.default for spec in SPECS}


def default_value(name: str) -> Any:
    """A parameter's default, as the node declares it: a ``value_of`` for the settings
    builders below where no node runs (benchmarks, recorded outputs)."""
    return _DEFAULTS[name]


def refine_settings(value_of: Callable[[str], Any]) -> RefineSettings:
    """The refinement the live parameters ask for."""
    return RefineSettings(value_of('refine'), value_of('refine_radius'),
                          value_of('refine_epsilon'), value_of('refine_depth_weight'))


def declare_parameters(node) -> None:
    """Declare every parameter of SPECS on ``node`` with its descriptor."""
    for spec in SPECS:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())


def validate_text_prompts(prompts: Sequence[str], max_prompts: int) -> str | None:
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


def parameter_problem(name: str, value: Any, *, max_prompts: int, prompts_in_force: int,
                      check_model_resolution: Callable[[int], int] | None,
                      int8_resolution: int | None = None) -> str | None:
    """
    Why ``value`` is unacceptable for parameter ``name`` now, or None.

    ``check_model_resolution`` is the loaded model's own check (patch size), None without one;
    ``int8_resolution`` the input side of an engine running int8, None when none does.
    """
    try:
        if name == 'model':
            if not value.strip():
                return 'model must be a hub id or a model folder, not empty'
        elif name == 'device':
            check_device_name(value)
        elif name == 'dtype':
            check_dtype_name(value)
        elif name == 'backend':
            check_backend_name(value)
        elif name == 'compile_mode':
            check_compile_mode(value)
        elif name == 'cpu_threads':
            cpu_thread_count(value)
        elif name == 'prompts':
            return validate_text_prompts(list(value), max_prompts)
        elif name == 'cameras':
            return camera_names_problem(list(value))
        elif name in CHOICES:
            if value not in CHOICES[name]:
                return f"'{value}' is not one of {', '.join(CHOICES[name])}"
        elif name == 'threshold':
            if not 0.0 <= value <= 1.0:  # False for NaN too
                return 'threshold must be within [0, 1]'
        elif name == 'resolution':
            side = (check_model_resolution or check_resolution)(value)
            if int8_resolution is not None and side != int8_resolution:
                # Quantizing for the new size would hold the engine (and every frame) for
                # minutes; configure is where that wait belongs.
                return ('the engine runs int8, quantized for one input size: cleanup, set it, '
                        'then configure again')
        elif name == 'teach_label_prefix':
            if not value.strip() or len(value) > MAX_PROMPT_CHARACTERS - 10:
                return ('teach_label_prefix must be non-empty and at most '
                        f'{MAX_PROMPT_CHARACTERS - 10} characters')
        elif name == 'max_prompts':
            if value < prompts_in_force:
                return f'{prompts_in_force} prompts are in force; max_prompts cannot be lower'
    except ValueError as error:
        return str(error)
    return None
