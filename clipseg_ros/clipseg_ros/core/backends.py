"""
Which runtime computes the network: the back end (torch or OpenVINO), the device and the
precision, chosen from the engine's options and what the machine has. No ROS.

auto picks torch on CUDA and OpenVINO on the CPU when it is installed; dtype auto picks float16
on CUDA, bfloat16 on a CPU that computes it natively and float32 elsewhere (docs/cpu_backends.md).
int8 is never picked by auto (it changes the outputs): the user asks for it, on OpenVINO.
"""

from dataclasses import dataclass
import logging
import os
from pathlib import Path
from typing import Any, Callable

from clipseg_ros.core.cpu_features import CpuFeatures, host_cpu_features
from clipseg_ros.core.model_loading import ModelLoadError
from clipseg_ros.core.network import SharedEncoderNetwork
from clipseg_ros.core.options import (
    check_compile_mode, check_dtype_name, check_resolution, effective_compile_mode,
    resolve_device, resolve_dtype)
import torch

BACKEND_CHOICES = ('auto', 'torch', 'openvino')
OPENVINO_INSTALL = 'pip install openvino'
NNCF_INSTALL = 'pip install nncf'
# compiled_model_cache 'auto': this folder under the user's cache directory.
AUTO_CACHE = 'auto'

_LOGGER = logging.getLogger(__name__)


def check_backend_name(backend: str) -> str:
    """Return the normalised back-end name (auto, torch, openvino); ValueError otherwise."""
    if not isinstance(backend, str) or backend.strip().lower() not in BACKEND_CHOICES:
        raise ValueError(
            f'unknown backend {backend!r}: expected one of {", ".join(BACKEND_CHOICES)}')
    return backend.strip().lower()


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when ``import openvino`` fails."""
    try:
        import openvino
    except Exception:  # ImportError, or a broken install failing in its own imports
        return None
    return str(openvino.__version__)


def default_cache_folder() -> Path:
    """$XDG_CACHE_HOME/clipseg_ros, or ~/.cache/clipseg_ros without that variable."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path('~/.cache').expanduser())
    return Path(base) / 'clipseg_ros'


def cache_folder(setting: str | None) -> Path | None:
    """The folder ``compiled_model_cache`` names: 'auto' the default, '' or None no cache."""
    if setting is None or not str(setting).strip():
        return None
    if str(setting).strip() == AUTO_CACHE:
        return default_cache_folder()
    return Path(os.path.expanduser(str(setting).strip()))


@dataclass(frozen=True)
class Runtime:
    """What computes the network: back end, device, precision, and the CPU's features."""

    backend: str          # 'torch' or 'openvino'
    device: torch.device
    dtype: torch.dtype    # the precision the network computes in
    cpu: CpuFeatures
    missed: str = ''      # what auto could not use, and how to get it

    @property
    def float_dtype(self) -> torch.dtype:
        """The float precision of the layers int8 leaves in float: the best the CPU computes
        natively; the precision itself for the float dtypes."""
        if self.dtype != torch.int8:
            return self.dtype
        return torch.bfloat16 if self.cpu.native_bfloat16 else torch.float32

    @property
    def tensor_dtype(self) -> torch.dtype:
        """dtype of the torch model, prompts and frames: OpenVINO takes float32 and applies the
        precision itself when it compiles."""
        return torch.float32 if self.backend == 'openvino' else self.dtype

    def summary(self) -> str:
        """One line for logs and diagnostics."""
        precision = str(self.dtype).replace('torch.', '')
        if self.dtype == torch.int8:
            precision += f" ({str(self.float_dtype).replace('torch.', '')} elsewhere)"
        where = f'{self.device}' if self.device.type == 'cuda' else f'cpu: {self.cpu.summary()}'
        version = ''
        if self.backend == 'openvino':
            version = ' ' + (openvino_version() or '').split('-')[0]
        note = f'; {self.missed}' if self.missed else ''
        return f'{self.backend}{version}, {precision}, {where}{note}'


def resolve_runtime(device: str, dtype: str, backend: str, resolution: int, compile_mode: str,
                    cpu: CpuFeatures | None = None,
                    openvino: Callable[[], str | None] = openvino_version) -> tuple[Runtime, str]:
    """
    Check the engine's options; return the runtime and the compile mode.

    ``cpu`` and ``openvino`` default to this machine's CPU flags and OpenVINO install (tests
    pass fakes). Raises ValueError for a bad option and ModelLoadError for one this machine
    cannot honour (CUDA missing, OpenVINO missing).
    """
    name = check_backend_name(backend)
    check_resolution(resolution)
    mode = check_compile_mode(compile_mode)
    # OpenVINO runs on the CPU here, so device auto means the CPU for it.
    on_cpu = name == 'openvino' or check_dtype_name(dtype) == 'int8'
    torch_device = resolve_device('cpu' if on_cpu and device == 'auto' else device)
    cpu = cpu or host_cpu_features()
    torch_dtype = resolve_dtype(dtype, torch_device, cpu)
    missed = ''
    if name == 'openvino':
        if torch_device.type != 'cpu':
            raise ValueError(f"backend 'openvino' runs on the CPU: use device 'cpu' or 'auto' "
                             f"with it, or backend 'torch' on {torch_device}")
        if openvino() is None:
            raise ModelLoadError("backend 'openvino' was requested but OpenVINO is not "
                                 f"installed: install it with '{OPENVINO_INSTALL}', or use "
                                 "backend 'torch'")
    elif name == 'auto':
        name = 'torch'
        if torch_device.type == 'cpu':
            if openvino() is not None:
                name = 'openvino'
            else:
                missed = (f'OpenVINO is not installed, so the CPU runs torch (several times '
                          f"slower): '{OPENVINO_INSTALL}'")
                _LOGGER.warning('backend auto: %s', missed)
    if torch_dtype == torch.int8:
        check_int8_backend(name, openvino)
    return Runtime(name, torch_device, torch_dtype, cpu, missed), mode


def nncf_version() -> str | None:
    """The installed NNCF's version, or None when ``import nncf`` fails."""
    try:
        import nncf
    except Exception:  # ImportError, or a broken install failing in its own imports
        return None
    return str(nncf.__version__)


def check_int8_backend(backend: str, openvino: Callable[[], str | None],
                       nncf: Callable[[], str | None] = nncf_version) -> None:
    """Refuse int8 on torch, and without OpenVINO or NNCF installed, with the reason."""
    if backend == 'torch':
        installed = '' if openvino() is not None else \
            f" (OpenVINO is not installed: '{OPENVINO_INSTALL}')"
        raise ValueError("dtype 'int8' runs on the openvino back end only, not on torch"
                         f"{installed}: use backend 'openvino' or 'auto'")
    if nncf() is None:
        raise ModelLoadError(f"dtype 'int8' quantizes with NNCF, which is not installed: "
                             f"install it with '{NNCF_INSTALL}', or use dtype 'auto'")


def build_network(model: Any, model_name: str, runtime: Runtime, compile_mode: str,
                  compiled_model_cache: str | None, calibration: Any = None) -> Any:
    """The network object the engine drives, on ``runtime``'s back end (model already moved);
    ``calibration``: the :class:`~clipseg_ros.core.openvino_network.Int8Calibration` of int8."""
    if runtime.backend == 'openvino':
        from clipseg_ros.core.openvino_network import OpenVinoNetwork
        return OpenVinoNetwork(model, model_name, runtime.dtype,
                               cache_folder(compiled_model_cache), runtime.float_dtype,
                               calibration)
    if runtime.backend != 'torch':
        raise ModelLoadError(f'no network for back end {runtime.backend!r}')
    return SharedEncoderNetwork(
        model, model_name,
        use_cuda_graphs=effective_compile_mode(compile_mode, runtime.device) == 'cuda_graphs')
