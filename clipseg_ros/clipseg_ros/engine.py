"""
CLIPSeg inference engine: pure torch + transformers, no ROS.

One vision-encoder pass per frame serves any number of prompts: CLIPSeg conditions only its
small decoder on the prompt (FiLM), so the engine runs the CLIP vision encoder once (and only
up to the last layer the decoder reads), then decodes all prompts as one batch. Prompt
embeddings are computed once, when prompts change, and text embeddings are cached by string.

Typical use::

    engine = ClipSegEngine('CIDAS/clipseg-rd64-refined')
    prompts = engine.text_prompts(['a cup', 'a person'])
    result = engine.segment(image_rgb, prompts, threshold=0.3)
    result.labels  # (H, W) uint8, 0 = background, k = prompts[k - 1]
"""

from collections import OrderedDict
from dataclasses import dataclass
import gc
import inspect
import json
import logging
import numbers
import os
from pathlib import Path
import re
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from clipseg_ros.outputs import region_stats, RegionStats, stats_from_histograms
from clipseg_ros.visual_prompt import engineer_visual_prompt
import numpy as np
import torch
from torch.nn.functional import interpolate

DEFAULT_MODEL = 'CIDAS/clipseg-rd64-refined'
# Text embeddings kept for reuse; the least recently used beyond this are forgotten.
TEXT_CACHE_SIZE = 1024
DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')
DTYPE_CHOICES = ('auto', 'float32', 'float16', 'bfloat16')
# auto = cuda_graphs on CUDA (1.8 ms against 9-12 ms eager, float16 on an H200), none on the
# CPU. torch.compile was measured too (14.6 ms) and is not offered.
COMPILE_MODES = ('auto', 'none', 'cuda_graphs')
# Captured CUDA graphs kept, one per (input size, prompt count): the camera stream's and, say,
# a ~/segment call's one-off prompts, without recapturing each time they alternate.
CUDA_GRAPH_CACHE_SIZE = 4
RESOLUTION_STEP = 16
MIN_RESOLUTION = 64
MAX_RESOLUTION = 1024
# Labels are published as uint8 with 0 reserved for the background.
MAX_PROMPTS = 255
# Where a model folder keeps its image preprocessing constants: the file of transformers 4 and
# the hub checkpoints, then the processor file of transformers 5 (image processor nested inside).
PREPROCESSOR_FILE = 'preprocessor_config.json'
PROCESSOR_FILE = 'processor_config.json'
# The oldest transformers whose CLIPSeg this engine is tested with (CI runs the engine tests on
# it as well as on the pinned release).
MIN_TRANSFORMERS_VERSION = '5.0.0'
# Weight files that can only be read by unpickling, which can execute arbitrary code.
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')

_DTYPES = {
    'float32': torch.float32,
    'float16': torch.float16,
    'bfloat16': torch.bfloat16,
}

_LOGGER = logging.getLogger(__name__)
# torch's own choice (one thread per physical core), taken before anything changes it.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()
# cpu_threads auto leaves a core to ROS from this many usable CPUs on.
SPARE_A_CORE_FROM = 4


class ModelLoadError(RuntimeError):
    """The model, its tokenizer or its preprocessor config could not be loaded."""


# eq=False: prompts compare by identity; field-wise == on a tensor has no single truth value.
@dataclass(frozen=True, eq=False)
class Prompt:
    """A segmentation prompt: a label and its CLIP conditional embedding."""

    label: str
    kind: str
    embedding: torch.Tensor


@dataclass
class SegmentationResult:
    """
    Result of :meth:`ClipSegEngine.segment` for a frame of size H x W and N prompts.

    ``labels`` is (H, W) uint8: 0 = background, k = 1-based index of the prompt with the highest
    probability at that pixel when that probability is >= the threshold. ``confidence`` is that
    highest probability (over all prompts), (H, W) float32. ``max_confidence`` is (N,) float32,
    each prompt's maximum over the image. ``stats`` holds each prompt's pixel count, box,
    centroid and mean confidence in ``labels``. ``probabilities`` is (N, H, W) float32 when
    requested.
    """

    labels: np.ndarray
    confidence: np.ndarray
    max_confidence: np.ndarray
    stats: RegionStats
    probabilities: np.ndarray | None
    inference_seconds: float


@dataclass(frozen=True)
class PreprocessConfig:
    """Image preprocessing constants of a CLIPSeg checkpoint (from its processor config)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> 'PreprocessConfig':
        """
        Read the constants from a ``preprocessor_config.json`` dictionary.

        Missing entries take the defaults of transformers' ``ViTImageProcessor``, which is the
        processor class CLIPSeg checkpoints name.
        """
        size = config.get('size', 224)
        if isinstance(size, Mapping):
            size = size.get('height', size.get('shortest_edge'))
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f'preprocessor config has an unusable size: {config.get("size")!r}')
        if config.get('do_rescale', True):
            rescale = float(config.get('rescale_factor', 1.0 / 255.0))
        else:
            rescale = 1.0
        if config.get('do_normalize', True):
            mean = tuple(float(v) for v in config.get('image_mean', (0.5, 0.5, 0.5)))
            std = tuple(float(v) for v in config.get('image_std', (0.5, 0.5, 0.5)))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0.0:
            raise ValueError(
                f'preprocessor config needs 3 means and 3 positive stds, got {mean} and {std}')
        return cls(size=size, mean=mean, std=std, rescale_factor=rescale)

    @classmethod
    def from_file(cls, path: 'str | Path') -> 'PreprocessConfig':
        """Read the constants from a ``preprocessor_config.json`` file."""
        with open(path, encoding='utf-8') as stream:
            return cls.from_dict(json.load(stream))


def _how_to_get(model: str) -> str:
    hub_id = model if _looks_like_hub_id(model) else DEFAULT_MODEL
    return (
        'To run offline, download the model on a connected machine with '
        f"'huggingface-cli download {hub_id} --local-dir DIR', copy DIR here and pass the "
        'folder path as the model.')


def _cause(exc: BaseException) -> str:
    """Describe an exception in one phrase (no trailing period) for an error message."""
    return f'{type(exc).__name__}: {str(exc).strip().rstrip(".")}'


def _looks_like_hub_id(model: str) -> bool:
    return re.fullmatch(r'[A-Za-z0-9][\w.-]*(/[\w.-]+)?', model) is not None


def check_device_name(device: str) -> str:
    """Return the normalised device string (auto, cpu, cuda, cuda:N); ValueError otherwise."""
    if not isinstance(device, str):
        raise ValueError(f'device must be a string, one of {", ".join(DEVICE_CHOICES)}')
    name = device.strip().lower()
    if name in ('auto', 'cpu', 'cuda') or re.fullmatch(r'cuda:\d+', name):
        return name
    raise ValueError(
        f'unknown device {device!r}: expected one of {", ".join(DEVICE_CHOICES)}')


def check_dtype_name(dtype: str) -> str:
    """Return the normalised dtype string (auto, float32, ...); ValueError otherwise."""
    if not isinstance(dtype, str) or dtype.strip().lower() not in ('auto',) + tuple(_DTYPES):
        raise ValueError(f'unknown dtype {dtype!r}: expected one of {", ".join(DTYPE_CHOICES)}')
    return dtype.strip().lower()


def resolve_device(device: str) -> torch.device:
    """
    Turn a device string (auto, cpu, cuda, cuda:N) into a torch device.

    Raises ValueError for an unknown string and ModelLoadError when CUDA is requested but not
    available.
    """
    name = check_device_name(device)
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        _LOGGER.warning('device auto: CUDA is not available, running CLIPSeg on the CPU (slow)')
        return torch.device('cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'cuda' or re.fullmatch(r'cuda:\d+', name):
        if not torch.cuda.is_available():
            build = (f'built for CUDA {torch.version.cuda}' if torch.version.cuda
                     else 'a CPU-only build')
            raise ModelLoadError(
                f"device '{device}' was requested but CUDA is not available on this machine "
                f'(torch {torch.__version__}, {build}); '
                "use device 'cpu' or 'auto', or install a CUDA build of torch")
        index = int(name.split(':')[1]) if ':' in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ModelLoadError(
                f"device '{device}' does not exist: this machine has {count} CUDA device(s)")
        return torch.device('cuda', index)
    raise AssertionError(f'check_device_name let {device!r} through')  # unreachable


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn a dtype string into a torch dtype for ``device``; half precision needs CUDA."""
    name = check_dtype_name(dtype)
    if name == 'auto':
        return torch.float16 if device.type == 'cuda' else torch.float32
    if device.type != 'cuda' and name != 'float32':
        raise ValueError(
            f"dtype '{dtype}' is not supported on the CPU (half precision is slow or missing "
            "there): use dtype 'float32' or 'auto'")
    return _DTYPES[name]


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_thread_count(requested: int) -> int:
    """
    Threads for torch's CPU operators: ``requested`` when > 0. For 0 (auto): torch's default
    (one per physical core) within the usable CPUs, less one core when there are at least
    :data:`SPARE_A_CORE_FROM`.

    The spare core is for the executor, DDS and the camera driver: torch's thread team waits at
    every operator for its slowest member, so one preempted thread stalls the whole frame (tiny
    model, 30 Hz camera, 2 cores: latency p99 112-156 ms with one thread against 174-213 ms with
    two, same throughput). Below 4 cores a spare core costs too much throughput: the full model
    on 2 cores took 1.07 s a frame with one thread against 0.60 s with two.
    """
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or \
            requested < 0:
        raise ValueError(f'cpu_threads must be an integer >= 0 (0 = auto), got {requested!r}')
    if requested > 0:
        return int(requested)
    usable = usable_cpu_count()
    spare = 1 if usable >= SPARE_A_CORE_FROM else 0
    return max(1, min(_TORCH_DEFAULT_THREADS, usable - spare))


def set_cpu_threads(requested: int) -> int:
    """Apply :func:`cpu_thread_count` to this process's torch and return the count."""
    count = cpu_thread_count(requested)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def check_resolution(resolution: int) -> int:
    """Return ``resolution`` if it is a multiple of 16 in [64, 1024], else raise ValueError."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f'resolution must be an integer, got {resolution!r}')
    value = int(resolution)
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION or value % RESOLUTION_STEP:
        raise ValueError(
            f'resolution must be a multiple of {RESOLUTION_STEP} between {MIN_RESOLUTION} and '
            f'{MAX_RESOLUTION} (the model was trained at 352), got {value}')
    return value


def check_compile_mode(mode: str) -> str:
    """Return the normalised compile mode; ValueError for an unknown one."""
    if not isinstance(mode, str) or mode.strip().lower() not in COMPILE_MODES:
        raise ValueError(
            f'unknown compile_mode {mode!r}: expected one of {", ".join(COMPILE_MODES)}')
    return mode.strip().lower()


def _check_frame(image_rgb: np.ndarray) -> None:
    if not isinstance(image_rgb, np.ndarray):
        raise ValueError(f'image must be a numpy array, got {type(image_rgb).__name__}')
    if image_rgb.dtype != np.uint8:
        raise ValueError(f'image must have dtype uint8 (RGB 0..255), got {image_rgb.dtype}')
    if image_rgb.ndim != 3:
        raise ValueError(f'image must have shape (H, W, 3), got {image_rgb.ndim} dimension(s)')
    if image_rgb.shape[2] != 3:
        raise ValueError(f'image must have 3 channels (RGB), got {image_rgb.shape[2]}')
    if image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
        raise ValueError(f'image is empty: shape {image_rgb.shape}')


def _check_local_folder(folder: Path) -> None:
    """Refuse folders that are not safetensors model folders, without unpickling anything."""
    fix = _how_to_get(DEFAULT_MODEL)
    if not (folder / 'config.json').is_file():
        raise ModelLoadError(
            f"model folder '{folder}' has no config.json, so it is not a save_pretrained model "
            f'folder. {fix}')
    weights = sorted(folder.glob('*.safetensors'))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"model folder '{folder}' holds only pickle weights ({', '.join(pickles)}); "
                'they are refused because unpickling can run arbitrary code. Convert them on a '
                'trusted machine with model.save_pretrained(DIR, safe_serialization=True), or '
                f'download the safetensors weights instead. {fix}')
        raise ModelLoadError(
            f"model folder '{folder}' has no *.safetensors weights. {fix}")
    from safetensors import safe_open
    for path in weights:
        try:
            # Reads and checks only the header and the file size, not the tensors.
            with safe_open(str(path), framework='pt') as handle:
                handle.keys()
        except Exception as exc:  # noqa: B902 - any parse failure means the same thing here
            raise ModelLoadError(
                f"weights file '{path}' is corrupt or not a safetensors file "
                f'({_cause(exc)}); download it again. {fix}') from exc


def _load_pretrained(model: str, dtype: torch.dtype) -> tuple[Any, Any, PreprocessConfig]:
    """Load model, tokenizer and preprocessing constants from a hub id or a local folder."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError('model must be a non-empty hub id or folder path')
    path = Path(model).expanduser()
    if path.is_dir():
        _check_local_folder(path)
        source, local_only, what = str(path), True, f"model folder '{model}'"
    elif path.exists():
        raise ModelLoadError(
            f"model '{model}' is a file; pass the folder that holds config.json and the "
            'safetensors weights, or a hub id')
    elif not _looks_like_hub_id(model):
        raise ModelLoadError(f"model folder '{model}' does not exist. {_how_to_get(model)}")
    else:
        source, local_only, what = model, False, f"model '{model}'"

    # Imported here so that importing this module stays fast for code that never loads a model.
    from transformers import AutoTokenizer, CLIPSegForImageSegmentation

    try:
        network = CLIPSegForImageSegmentation.from_pretrained(
            source, use_safetensors=True, local_files_only=local_only, dtype=dtype)
    except Exception as exc:  # noqa: B902 - reported as one clear error with its cause
        where = ('' if local_only else
                 ' It is not a local folder either, and it is neither in the Hugging Face '
                 'cache nor downloadable from here.')
        raise ModelLoadError(
            f'could not load the weights of {what}: {_cause(exc)}.{where} '
            f'{_how_to_get(model)}') from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:  # noqa: B902
        raise ModelLoadError(
            f'could not load the tokenizer of {what}: {_cause(exc)}. '
            f'{_how_to_get(model)}') from exc
    preprocess = _read_preprocess_config(source, local_only, what, model)
    return network, tokenizer, preprocess


def _processor_file(source: str, name: str, local_only: bool) -> 'str | None':
    """Path of ``name`` in a model folder or the hub cache, None when the model has none."""
    from transformers.utils import cached_file
    return cached_file(source, name, local_files_only=local_only,
                       _raise_exceptions_for_missing_entries=False)


def preprocess_dict_from_processor_file(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    Return the image processor part of a processor file's dictionary.

    ``preprocessor_config.json`` is the image processor itself; ``processor_config.json``
    (transformers 5) nests it under ``image_processor``.
    """
    nested = config.get('image_processor')
    if isinstance(nested, Mapping):
        return nested
    return config


def _read_preprocess_config(source: str, local_only: bool, what: str,
                            model: str) -> PreprocessConfig:
    """Read the preprocessing constants from whichever processor file the model has."""
    tried = []
    for name in (PREPROCESSOR_FILE, PROCESSOR_FILE):
        tried.append(name)
        try:
            path = _processor_file(source, name, local_only)
            if path is None:
                continue
            with open(path, encoding='utf-8') as stream:
                config = json.load(stream)
            if not isinstance(config, Mapping):
                raise ValueError('it does not hold a JSON object')
            return PreprocessConfig.from_dict(preprocess_dict_from_processor_file(config))
        except Exception as exc:  # noqa: B902 - reported as one clear error with its cause
            raise ModelLoadError(
                f'could not read {name} of {what}: {_cause(exc)}. '
                f'{_how_to_get(model)}') from exc
    raise ModelLoadError(
        f'{what} has no image processor config: neither {" nor ".join(tried)} was found '
        '(CLIPSegProcessor.save_pretrained writes one). '
        f'{_how_to_get(model)}')


def check_transformers_version(installed: 'str | None' = None) -> str:
    """
    Return the installed transformers version; raise ModelLoadError when it is too old.

    ``installed`` overrides the detected version (for tests).
    """
    from packaging.version import InvalidVersion, Version
    if installed is None:
        import transformers
        installed = transformers.__version__
    try:
        too_old = Version(installed) < Version(MIN_TRANSFORMERS_VERSION)
    except InvalidVersion:
        too_old = False  # a development build: let loading say whether it works
    if too_old:
        raise ModelLoadError(
            f'transformers {installed} is installed, but clipseg_ros needs transformers >= '
            f"{MIN_TRANSFORMERS_VERSION}: run 'pip install \"transformers>="
            f"{MIN_TRANSFORMERS_VERSION}\"'")
    return installed


# Elements of one (prompts x rows x width) slab when probability maps are brought to the
# frame's size: the slabs' temporaries stay at tens of MB for any prompt count and frame size.
SLAB_ELEMENTS = 1 << 22


@dataclass
class _FrameMaps:
    labels: torch.Tensor          # (H, W) uint8
    confidence: torch.Tensor      # (H, W) float32
    max_confidence: torch.Tensor  # (N,) float32
    probabilities: torch.Tensor | None  # (N, H, W) float32, only when asked for


def _bilinear_taps(out_size: int, in_size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Source indices and weights of bilinear resizing along one axis (align_corners=False).

    The same sampling as torch's ``interpolate(mode='bilinear', align_corners=False)``:
    output pixel i reads source position (i + 0.5) * in / out - 0.5, clamped at 0.
    Returns (first index, second index, weight of the second); the first weighs 1 - that.
    """
    position = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * \
        (in_size / out_size) - 0.5
    position = position.clamp(min=0.0)
    first = position.floor().to(torch.int64).clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first, second, position - first.to(torch.float32)


def _labels_at_frame_size(probabilities: torch.Tensor, height: int, width: int,
                          threshold: float, keep_probabilities: bool) -> _FrameMaps:
    """
    Resize (N, r, r) probability maps to the frame bilinearly and label each pixel.

    The maps are resized a slab of rows at a time, and each slab is reduced to the best prompt
    and its probability before the next, so memory does not grow with N x H x W (16 prompts on
    a 4096 x 4096 frame would need 1 GB a frame at once). A pixel gets label k (1-based) when
    prompt k is the most probable there and its probability reaches ``threshold``; a threshold
    of 1 labels nothing, even where a probability rounds to 1.
    """
    count, rows_in, columns_in = probabilities.shape
    device = probabilities.device
    row_first, row_second, row_weight = _bilinear_taps(height, rows_in, device)
    column_first, column_second, column_weight = _bilinear_taps(width, columns_in, device)
    labels = torch.empty(height, width, dtype=torch.uint8, device=device)
    confidence = torch.empty(height, width, dtype=torch.float32, device=device)
    max_confidence = torch.zeros(count, dtype=torch.float32, device=device)
    kept = (torch.empty(count, height, width, dtype=torch.float32, device=device)
            if keep_probabilities else None)
    slab_rows = max(1, SLAB_ELEMENTS // (count * width))
    label_nothing = threshold >= 1.0
    for top in range(0, height, slab_rows):
        rows = slice(top, min(top + slab_rows, height))
        weight = row_weight[rows].view(1, -1, 1)
        # Rows first, then columns: (N, slab, r) -> (N, slab, W).
        blended = probabilities[:, row_first[rows]] * (1.0 - weight) + \
            probabilities[:, row_second[rows]] * weight
        slab = blended[:, :, column_first] * (1.0 - column_weight) + \
            blended[:, :, column_second] * column_weight
        best_value, best_index = slab.max(dim=0)
        confidence[rows] = best_value
        if label_nothing:
            labels[rows] = 0
        else:
            labels[rows] = torch.where(best_value >= threshold, best_index + 1,
                                       torch.zeros_like(best_index)).to(torch.uint8)
        torch.maximum(max_confidence, slab.amax(dim=(1, 2)), out=max_confidence)
        if kept is not None:
            kept[:, rows] = slab
    return _FrameMaps(labels, confidence, max_confidence, kept)


def _label_histograms(labels: torch.Tensor, confidence: torch.Tensor,
                      prompt_count: int) -> dict[str, torch.Tensor]:
    """
    Return the label histograms that :func:`stats_from_histograms` needs, on the labels' device.

    ``row_counts`` (H, N + 1) and ``column_counts`` (W, N + 1) count each label per image row
    and column; ``confidence_sums`` (N + 1,) adds up confidence per label. scatter_add_ into
    tables of known size, unlike bincount, needs no device synchronisation.
    """
    height, width = labels.shape
    bins = prompt_count + 1
    index = labels.long()
    ones = torch.ones((), dtype=torch.int64, device=labels.device).expand(height, width)
    row_counts = torch.zeros(height, bins, dtype=torch.int64, device=labels.device)
    row_counts.scatter_add_(1, index, ones)
    column_counts = torch.zeros(width, bins, dtype=torch.int64, device=labels.device)
    column_counts.scatter_add_(1, index.t(), ones.t())
    # float64: millions of float32 additions per label would lose digits.
    confidence_sums = torch.zeros(bins, dtype=torch.float64, device=labels.device)
    confidence_sums.index_add_(0, index.view(-1), confidence.view(-1).to(torch.float64))
    return {'row_counts': row_counts, 'column_counts': column_counts,
            'confidence_sums': confidence_sums}


def _stats_from_label_histograms(tables: Mapping[str, np.ndarray]) -> RegionStats:
    """The statistics from :func:`_label_histograms`' tables on the host (background dropped)."""
    return stats_from_histograms(tables['row_counts'][:, 1:].T, tables['column_counts'][:, 1:].T,
                                 tables['confidence_sums'][1:])


class _CudaGraphRunner:
    """Replays one captured CUDA graph of ``fn`` for fixed input shapes."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 pixel_values: torch.Tensor, embeddings: torch.Tensor) -> None:
        self.key = (tuple(pixel_values.shape), tuple(embeddings.shape))
        self._pixels = pixel_values.clone()
        self._embeddings = embeddings.clone()
        # Warm-up on a side stream, as capture requires (lazy inits, allocator pools).
        stream = torch.cuda.Stream(device=pixel_values.device)
        stream.wait_stream(torch.cuda.current_stream(pixel_values.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(self._pixels, self._embeddings)
        torch.cuda.current_stream(pixel_values.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._output = fn(self._pixels, self._embeddings)

    def __call__(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self._pixels.copy_(pixel_values)
        self._embeddings.copy_(embeddings)
        self._graph.replay()
        # Overwritten by the next replay; the caller consumes it under the engine lock.
        return self._output


class ClipSegEngine:
    """
    CLIPSeg segmentation of RGB frames for any number of text or image prompts.

    All methods are thread-safe: model use is serialised by an internal lock.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str = 'auto', dtype: str = 'auto',
                 resolution: int = 352, compile_mode: str = 'auto') -> None:
        """
        Load ``model`` (hub id or ``save_pretrained`` folder) onto ``device``.

        Raises ValueError for invalid arguments and ModelLoadError when the model cannot be
        loaded (the message names the model, the cause and the fix).
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        check_resolution(resolution)
        mode = check_compile_mode(compile_mode)
        check_transformers_version()
        network, tokenizer, preprocess = _load_pretrained(model, torch_dtype)
        self._setup(network, tokenizer, preprocess, torch_device, torch_dtype, resolution, mode,
                    model)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any,
                   preprocess: 'PreprocessConfig | Mapping[str, Any]',
                   device: str = 'auto', dtype: str = 'auto', resolution: int = 352,
                   compile_mode: str = 'auto',
                   model_name: str = 'in-memory model') -> 'ClipSegEngine':
        """
        Build an engine around an already constructed ``CLIPSegForImageSegmentation``.

        ``preprocess`` is a :class:`PreprocessConfig` or a processor-config dictionary. The
        model is moved to the device and dtype in place. Used by benchmarks and tests.
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        check_resolution(resolution)
        mode = check_compile_mode(compile_mode)
        if not isinstance(preprocess, PreprocessConfig):
            preprocess = PreprocessConfig.from_dict(preprocess)
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, preprocess, torch_device, torch_dtype, resolution, mode,
                      model_name)
        return engine

    def _setup(self, model: Any, tokenizer: Any, preprocess: PreprocessConfig,
               device: torch.device, dtype: torch.dtype, resolution: int, compile_mode: str,
               model_name: str) -> None:
        self._lock = threading.RLock()
        self._device = device
        self._dtype = dtype
        self._model_name = model_name
        self._preprocess_config = preprocess
        try:
            self._model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        except RuntimeError as exc:  # out of memory, or a device that fails at first use
            raise ModelLoadError(
                f'could not move {model_name} to {device} as {dtype}: {_cause(exc)}') from exc
        self._tokenizer = tokenizer
        config = model.config
        self._patch_size = int(config.vision_config.patch_size)
        self._embedding_size = int(config.projection_dim)
        self._max_text_tokens = int(config.text_config.max_position_embeddings)
        num_layers = len(model.clip.vision_model.encoder.layers)
        self._extract_layers = tuple(int(i) for i in config.extract_layers)
        if not self._extract_layers or not all(0 <= i < num_layers for i in self._extract_layers):
            raise ModelLoadError(
                f'{model_name}: extract_layers {self._extract_layers} must index the '
                f'{num_layers} vision encoder layers')
        # hidden_states[i + 1] in transformers is the output of encoder layer i, so layers
        # after the last extracted one never influence the decoder.
        self._last_layer = max(self._extract_layers)
        first_layer = model.clip.vision_model.encoder.layers[0]
        self._layer_takes_causal_mask = 'causal_attention_mask' in \
            inspect.signature(first_layer.forward).parameters
        self._resolution = self.check_model_resolution(resolution)
        if resolution != preprocess.size:
            _LOGGER.info('running at %d px; the processor config of %s says %d px',
                         resolution, model_name, preprocess.size)
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        # Least recently used first; bounded so a client sending ever-new prompts cannot grow it.
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.text_encoder_calls = 0
        self._pinned: Optional[torch.Tensor] = None
        self._graphs: OrderedDict[tuple, _CudaGraphRunner] = OrderedDict()
        # Position embeddings interpolated for the current input side (see _update_positions).
        self._positions: Optional[torch.Tensor] = None
        self._positions_size = 0
        if compile_mode == 'auto':
            compile_mode = 'cuda_graphs' if device.type == 'cuda' else 'none'
        elif compile_mode != 'none' and device.type != 'cuda':
            _LOGGER.warning("compile_mode '%s' needs CUDA; running eagerly on %s",
                            compile_mode, device)
            compile_mode = 'none'
        self._compile_mode = compile_mode

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """Device the model runs on."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the model weights and prompt embeddings."""
        return self._dtype

    @property
    def model_name(self) -> str:
        """Hub id or folder the model was loaded from."""
        return self._model_name

    @property
    def embedding_size(self) -> int:
        """Length D of the prompt embeddings (the model's projection_dim)."""
        return self._embedding_size

    @property
    def compile_mode(self) -> str:
        """Fast path in use: 'none' or 'cuda_graphs'."""
        return self._compile_mode

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Preprocessing constants read from the model's processor config."""
        return self._preprocess_config

    @property
    def resolution(self) -> int:
        """Side of the square image the encoder sees, in pixels."""
        return self._resolution

    @resolution.setter
    def resolution(self, value: int) -> None:
        checked = self.check_model_resolution(value)
        with self._lock:
            if checked != self._resolution:
                self._resolution = checked
                self._graphs.clear()

    def check_model_resolution(self, value: int) -> int:
        """Return ``value`` if this model can run at it; ValueError with the reason otherwise."""
        checked = check_resolution(value)
        if checked % self._patch_size:
            raise ValueError(
                f'resolution must be a multiple of the patch size {self._patch_size}, '
                f'got {checked}')
        return checked

    # ------------------------------------------------------------------ prompts

    def text_prompts(self, texts: Sequence[str]) -> list[Prompt]:
        """
        Return one text prompt per string, in order; labels are the strings themselves.

        Embeddings are cached by exact string, so only strings not seen before run through the
        text encoder (in one batch).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError("texts must be a list of strings, e.g. ['a cup'], not a string")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f'text prompt {index} is not a string: {text!r}')
            if not text.strip():
                raise ValueError(f'text prompt {index} is empty or only whitespace')
        with self._lock:
            embeddings = self._text_embeddings(list(texts))
        return [Prompt(label=text, kind='text', embedding=embedding)
                for text, embedding in zip(texts, embeddings)]

    def _text_embeddings(self, texts: list[str]) -> list[torch.Tensor]:
        """Return cached or new embeddings of ``texts``; the caller holds the lock."""
        model = self._require_model()
        missing = [text for text in dict.fromkeys(texts) if text not in self._text_cache]
        if missing:
            batch = self._tokenizer(missing, padding=True, truncation=True,
                                    max_length=self._max_text_tokens, return_tensors='pt')
            with torch.inference_mode():
                # The same call CLIPSegForImageSegmentation.get_conditional_embeddings makes.
                features = model.clip.get_text_features(
                    input_ids=batch['input_ids'].to(self._device),
                    attention_mask=batch['attention_mask'].to(self._device)).pooler_output
            self.text_encoder_calls += 1
            for text, row in zip(missing, features):
                self._text_cache[text] = row.clone()
        embeddings = [self._text_cache[text] for text in texts]
        for text in texts:
            self._text_cache.move_to_end(text)
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return embeddings

    def image_prompt(self, support_rgb: np.ndarray, mask: np.ndarray | None = None,
                     label: str = '', text: str | None = None,
                     text_weight: float = 0.5) -> Prompt:
        """
        Return a prompt from a support image and an optional object mask.

        The support image is engineered as the checkpoint was trained (see
        :mod:`clipseg_ros.visual_prompt`: resize and normalise, background blurred and pulled
        to the mean colour, crop to the widened mask box, square pad, resize) and embedded with
        the CLIP image encoder. With ``text``, the embedding is
        ``(1 - text_weight) * image + text_weight * text``. The label defaults to ``text``, or
        ``'image'`` without one.
        """
        if not isinstance(label, str):
            raise ValueError(f'label must be a string, got {type(label).__name__}')
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError('text must be None or a non-empty string')
        if (isinstance(text_weight, bool) or not isinstance(text_weight, numbers.Real)
                or not 0.0 <= float(text_weight) <= 1.0):
            raise ValueError(f'text_weight must be a number in [0, 1], got {text_weight!r}')
        weight = float(text_weight)
        config = self._preprocess_config
        # Normalised at the model size already, so it bypasses _preprocess.
        engineered = engineer_visual_prompt(
            support_rgb, mask, self._resolution, mean=config.mean, std=config.std,
            rescale_factor=config.rescale_factor)
        with self._lock:
            model = self._require_model()
            with torch.inference_mode():
                pixel_values = torch.from_numpy(engineered).unsqueeze(0).to(
                    device=self._device, dtype=self._dtype)
                embedding = model.clip.get_image_features(
                    pixel_values=pixel_values).pooler_output[0]
                if text is not None:
                    text_embedding = self._text_embeddings([text])[0]
                    embedding = (1.0 - weight) * embedding + weight * text_embedding
        return Prompt(label=label or text or 'image', kind='image', embedding=embedding)

    # ------------------------------------------------------------------ inference

    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """
        Return the model input for an (H, W, 3) uint8 RGB frame: (1, 3, r, r) normalised.

        Bilinear resize to resolution x resolution (aspect not kept, antialiased when
        shrinking), rescale and normalise with the processor's constants.
        """
        _check_frame(image_rgb)
        with self._lock, torch.inference_mode():
            self._require_model()
            return self._preprocess(image_rgb, pinned=False)

    def _preprocess(self, image_rgb: np.ndarray, pinned: bool) -> torch.Tensor:
        frame = self._upload(np.ascontiguousarray(image_rgb), pinned)
        height, width = frame.shape[:2]
        size = self._resolution
        # Resize in float32 whatever the model dtype: it is cheap and keeps half-precision
        # rounding out of the interpolation; the result is cast once at the end.
        pixels = frame.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        if (height, width) != (size, size):
            pixels = interpolate(pixels, size=(size, size), mode='bilinear',
                                 align_corners=False,
                                 antialias=height > size or width > size)
        pixels = (pixels * self._preprocess_config.rescale_factor - self._mean) / self._std
        return pixels.to(self._dtype)

    def _upload(self, image: np.ndarray, pinned: bool) -> torch.Tensor:
        host = torch.from_numpy(image)
        if self._device.type != 'cuda':
            return host
        if not pinned:
            return host.to(self._device)
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        # Safe to refill: the previous frame's upload finished at that frame's final sync.
        self._pinned.copy_(host)
        return self._pinned.to(self._device, non_blocking=True)

    def _encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Run the vision encoder up to the last extracted layer; return its activations."""
        vision = self._model.clip.vision_model
        # The same operations as vision.embeddings(pixel_values, interpolate_pos_encoding=True),
        # with the interpolated position embeddings taken from the per-size cache.
        stem = vision.embeddings
        patches = stem.patch_embedding(pixel_values.to(stem.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        classes = stem.class_embedding.expand(pixel_values.shape[0], 1, -1)
        hidden = torch.cat([classes, patches], dim=1) + self._positions
        hidden = vision.pre_layrnorm(hidden)
        kept = {}
        # Releases before 5.1 take a causal mask as a third positional argument (None for
        # the vision encoder) and may return a tuple.
        masks = (None, None) if self._layer_takes_causal_mask else (None,)
        for index, layer in enumerate(vision.encoder.layers[:self._last_layer + 1]):
            hidden = layer(hidden, *masks)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if index in self._extract_layers:
                kept[index] = hidden
        return [kept[index] for index in self._extract_layers]

    def _probabilities_eager(self, pixel_values: torch.Tensor,
                             embeddings: torch.Tensor) -> torch.Tensor:
        """Return (N, r, r) probabilities for one frame and N prompt embeddings."""
        count = embeddings.shape[0]
        # expand() shares the single frame's activations across the N prompts without a copy.
        activations = [a.expand(count, -1, -1) for a in self._encode(pixel_values)]
        logits = self._model.decoder(activations, embeddings).logits
        # The decoder squeezes its channel dimension; pin the shape down for any N. The sigmoid
        # runs in float32: in half precision it rounds to exactly 1.0 from a logit of about 8.
        logits = logits.reshape(count, logits.shape[-2], logits.shape[-1])
        return torch.sigmoid(logits.to(torch.float32))

    def _update_positions(self, size: int) -> None:
        """
        Interpolate the position embeddings for a size x size input, once per size.

        transformers re-interpolates them (bicubic) on every forward: 2.1 ms of a 3.4 ms
        float16 frame on an H200. Done here, outside the CUDA graph, whose recorded inputs
        change only with the input size (which also changes its key).
        """
        if self._positions is not None and self._positions_size == size:
            return
        stem = self._model.clip.vision_model.embeddings
        tokens = (size // self._patch_size) ** 2 + 1
        template = stem.position_embedding.weight.new_empty(1, tokens, stem.embed_dim)
        self._positions = stem.interpolate_pos_encoding(template, size, size)
        self._positions_size = size

    def _probabilities(self, pixel_values: torch.Tensor,
                       embeddings: torch.Tensor) -> torch.Tensor:
        self._update_positions(pixel_values.shape[-1])
        if self._compile_mode == 'cuda_graphs':
            try:
                key = (tuple(pixel_values.shape), tuple(embeddings.shape))
                graph = self._graphs.get(key)
                if graph is None:
                    if len(self._graphs) >= CUDA_GRAPH_CACHE_SIZE:
                        self._graphs.popitem(last=False)
                    graph = _CudaGraphRunner(self._probabilities_eager, pixel_values, embeddings)
                    self._graphs[key] = graph
                self._graphs.move_to_end(key)
                return graph(pixel_values, embeddings)
            except Exception as exc:  # noqa: B902 - any capture failure: fall back for good
                _LOGGER.warning('CUDA graph capture failed (%s: %s); running eagerly',
                                type(exc).__name__, exc)
                self._graphs.clear()
                self._compile_mode = 'none'
        return self._probabilities_eager(pixel_values, embeddings)

    def segment(self, image_rgb: np.ndarray, prompts: Sequence[Prompt], threshold: float = 0.3,
                return_probabilities: bool = False) -> SegmentationResult:
        """
        Segment an (H, W, 3) uint8 RGB frame for all ``prompts`` with one encoder pass.

        A pixel gets label k (1-based prompt index) when prompt k has the highest probability
        there and that probability is >= ``threshold``; otherwise 0 (background).
        """
        _check_frame(image_rgb)
        if isinstance(prompts, Prompt) or not isinstance(prompts, Sequence):
            raise ValueError('prompts must be a list of Prompt objects')
        if len(prompts) == 0:
            raise ValueError('no prompts given: pass at least one Prompt')
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(
                f'{len(prompts)} prompts given, at most {MAX_PROMPTS} fit in uint8 labels')
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, Prompt):
                raise ValueError(f'prompt {index} is a {type(prompt).__name__}, not a Prompt')
            if not isinstance(prompt.embedding, torch.Tensor):
                raise ValueError(f'prompt {index} has no embedding tensor')
            if prompt.embedding.ndim != 1 or prompt.embedding.shape[0] != self._embedding_size:
                raise ValueError(
                    f"prompt {index} ('{prompt.label}') has an embedding of shape "
                    f'{tuple(prompt.embedding.shape)}; this model needs '
                    f'({self._embedding_size},): all prompts must come from the same model')
        if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                or not 0.0 <= float(threshold) <= 1.0):
            raise ValueError(f'threshold must be a number in [0, 1], got {threshold!r}')
        height, width = image_rgb.shape[:2]
        with self._lock, torch.inference_mode():
            # Timed from here: waiting for the lock (a prompt being embedded, ~/segment) is
            # not inference.
            start = time.perf_counter()
            self._require_model()
            embeddings = torch.stack(
                [p.embedding.to(device=self._device, dtype=self._dtype) for p in prompts])
            pixel_values = self._preprocess(image_rgb, pinned=True)
            maps = _labels_at_frame_size(
                self._probabilities(pixel_values, embeddings), height, width, float(threshold),
                return_probabilities)
            outputs = {'labels': maps.labels, 'confidence': maps.confidence,
                       'max_confidence': maps.max_confidence}
            if self._device.type == 'cuda':
                # On the GPU the statistics cost microseconds and only small tables travel;
                # on the host they took 3 ms (640x480) to 14 ms (1280x720) a frame.
                outputs.update(_label_histograms(maps.labels, maps.confidence, len(prompts)))
            if return_probabilities:
                outputs['probabilities'] = maps.probabilities
            host = dict(zip(outputs, self._to_host(list(outputs.values()))))
        if 'row_counts' in host:
            stats = _stats_from_label_histograms(host)
        else:  # on the CPU, numpy's bincount beats torch's scatter
            stats = region_stats(host['labels'], host['confidence'], len(prompts))
        return SegmentationResult(
            labels=host['labels'], confidence=host['confidence'],
            max_confidence=host['max_confidence'], stats=stats,
            probabilities=host.get('probabilities'),
            inference_seconds=time.perf_counter() - start)

    def _to_host(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Copy tensors to numpy; on CUDA with a single synchronisation for all of them."""
        if self._device.type == 'cuda':
            copies = [t.to('cpu', non_blocking=True) for t in tensors]
            torch.cuda.current_stream(self._device).synchronize()
        else:
            copies = tensors
        return [t.numpy() for t in copies]

    # ------------------------------------------------------------------ resources

    def memory_in_use(self) -> int:
        """Return the bytes of device memory torch has allocated (CUDA), 0 on the CPU."""
        if self._device.type == 'cuda':
            return int(torch.cuda.memory_allocated(self._device))
        return 0

    def release(self) -> None:
        """Drop the model and all cached prompts; free CUDA memory. Idempotent."""
        with self._lock:
            self._model = None
            self._tokenizer = None
            self._text_cache.clear()
            self._graphs.clear()
            self._pinned = None
            self._positions = None
            gc.collect()
            if self._device.type == 'cuda':
                torch.cuda.empty_cache()

    def free_cache(self) -> None:
        """Return unused cached CUDA memory to the driver (e.g. after an out-of-memory error).

        Under the engine lock, so it never lands in the middle of a CUDA graph capture.
        """
        with self._lock:
            if self._device.type == 'cuda':
                torch.cuda.empty_cache()

    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError('the engine was released; create a new ClipSegEngine')
        return self._model


__all__ = [
    'DEFAULT_MODEL', 'ClipSegEngine', 'ModelLoadError', 'PreprocessConfig', 'Prompt',
    'SegmentationResult', 'check_compile_mode', 'check_device_name', 'check_dtype_name',
    'check_resolution', 'check_transformers_version', 'resolve_device', 'resolve_dtype',
]
