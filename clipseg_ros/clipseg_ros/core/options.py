"""
The vocabulary of engine options, checked in one place for the engine and the node's parameters:
device, dtype, compile mode, input resolution and CPU threads. No ROS.
"""

import logging
import os
import re

from clipseg_ros.core.cpu_features import CpuFeatures, host_cpu_features
from clipseg_ros.core.model_loading import ModelLoadError
import cv2
import numpy as np
import torch

DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')
DTYPE_CHOICES = ('auto', 'float32', 'float16', 'bfloat16', 'int8')
# auto = cuda_graphs on CUDA, none on the CPU (docs/results.md, "GPU": why torch.compile is not
# offered).
COMPILE_MODES = ('auto', 'none', 'cuda_graphs')
RESOLUTION_STEP = 16
MIN_RESOLUTION = 64
MAX_RESOLUTION = 1024
# resolution 0: the input size the model's processor config names.
MODEL_RESOLUTION = 0

_DTYPES = {
    'float32': torch.float32,
    'float16': torch.float16,
    'bfloat16': torch.bfloat16,
    # int8: OpenVINO only, the converted graph quantized (docs/cpu_backends.md)
    'int8': torch.int8,
}

_LOGGER = logging.getLogger(__name__)
# torch's own choice (one thread per physical core), taken before anything changes it.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()
# cpu_threads auto leaves a core to ROS from this many usable CPUs on.
SPARE_A_CORE_FROM = 4


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


def resolve_dtype(dtype: str, device: torch.device,
                  cpu: CpuFeatures | None = None) -> torch.dtype:
    """
    Turn a dtype string into a torch dtype for ``device``. auto: float16 on CUDA; on the CPU
    bfloat16 where it computes bfloat16 natively (``cpu``, default this machine's), else
    float32. float16 needs CUDA, bfloat16 CUDA or such a CPU, int8 a CPU with VNNI or AMX-INT8
    (the back end's check that it is OpenVINO is in :mod:`clipseg_ros.core.backends`).
    """
    name = check_dtype_name(dtype)
    if name == 'int8' and device.type != 'cpu':
        raise ValueError(f"dtype 'int8' runs on the CPU (OpenVINO back end), not on {device}: "
                         "use dtype 'float16' or 'auto' there")
    if device.type == 'cuda':
        return torch.float16 if name == 'auto' else _DTYPES[name]
    cpu = cpu or host_cpu_features()
    if name == 'auto':
        return torch.bfloat16 if cpu.native_bfloat16 else torch.float32
    if name == 'bfloat16' and not cpu.native_bfloat16:
        raise ValueError(
            f"dtype 'bfloat16' needs a CPU that computes it natively (AMX or AVX-512 BF16); "
            f'{cpu.summary()} would emulate it, slower than float32: use dtype \'float32\' '
            "or 'auto'")
    if name == 'int8' and not cpu.native_int8:
        raise ValueError(
            f"dtype 'int8' needs a CPU with int8 dot products (VNNI: avx_vnni or avx512_vnni, "
            f'or AMX-INT8: amx_int8); {cpu.summary()} has none, and int8 would be slower than '
            "float32 there: use dtype 'auto'")
    if name == 'float16':
        raise ValueError(
            "dtype 'float16' is not supported on the CPU (slow or missing there): use dtype "
            "'float32', 'bfloat16' on a CPU with AMX or AVX-512 BF16, or 'auto'")
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
    every operator for its slowest member, so one preempted thread stalls the whole frame. Below
    4 cores a spare core costs more throughput than it saves in latency (docs/design.md).
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
    """
    Apply :func:`cpu_thread_count` to this process's torch and OpenCV and return the count.

    OpenCV's thread team does the frame's own work (labels, instances, overlay, refinement):
    on more threads than asked for it spends CPU waiting for its members, which the frame pays.
    """
    count = cpu_thread_count(requested)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if cv2.getNumThreads() != count:
        cv2.setNumThreads(count)
    return count


def check_resolution(resolution: int) -> int:
    """
    Return ``resolution`` if it is 0 (the model's own input size) or a multiple of 16 in
    [64, 1024], else raise ValueError.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f'resolution must be an integer, got {resolution!r}')
    value = int(resolution)
    if value == MODEL_RESOLUTION:
        return value
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION or value % RESOLUTION_STEP:
        raise ValueError(
            f'resolution must be 0 (the model\'s own input size) or a multiple of '
            f'{RESOLUTION_STEP} between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {value}')
    return value


def check_compile_mode(mode: str) -> str:
    """Return the normalised compile mode; ValueError for an unknown one."""
    if not isinstance(mode, str) or mode.strip().lower() not in COMPILE_MODES:
        raise ValueError(
            f'unknown compile_mode {mode!r}: expected one of {", ".join(COMPILE_MODES)}')
    return mode.strip().lower()


def effective_compile_mode(mode: str, device: torch.device) -> str:
    """The fast path ``mode`` gives on ``device``: auto = cuda_graphs on CUDA, none elsewhere."""
    if mode == 'auto':
        return 'cuda_graphs' if device.type == 'cuda' else 'none'
    if mode != 'none' and device.type != 'cuda':
        _LOGGER.warning("compile_mode '%s' needs CUDA; running eagerly on %s", mode, device)
        return 'none'
    return mode
