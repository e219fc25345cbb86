"""The option vocabulary (device, dtype, compile mode, CPU threads) and how the engine uses it."""

import logging

from clipseg_ros.core import options as options_module
from clipseg_ros.core.cpu_features import CpuFeatures
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.model_loading import ModelLoadError
from clipseg_ros.core.options import cpu_thread_count, set_cpu_threads
import cv2
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_without_cuda_is_explained(tiny_model_dir) -> None:
    for device in ('cuda', 'cuda:0'):
        with pytest.raises(ModelLoadError, match='CUDA is not available'):
            ClipSegEngine(str(tiny_model_dir), device=device)


# A CPU without bfloat16 arithmetic (test_backends.py covers one with it).
NO_BFLOAT16 = CpuFeatures('fake CPU without AMX or AVX-512 BF16', frozenset({'avx2'}))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_half_precision_on_cpu_is_refused(tiny_model_dir, dtype) -> None:
    with pytest.raises(ValueError, match='float32'):
        ClipSegEngine(str(tiny_model_dir), device='cpu', dtype=dtype, cpu_features=NO_BFLOAT16)


@pytest.mark.parametrize('kwargs, message', [
    ({'device': 'gpu'}, 'auto, cpu, cuda, cuda:N'),
    ({'device': 'cuda:x'}, 'auto, cpu, cuda, cuda:N'),
    ({'dtype': 'fp16'}, 'auto, float32, float16, bfloat16'),
    ({'compile_mode': 'compile'}, 'auto, none, cuda_graphs'),
    ({'model': ''}, 'non-empty'),
])
def test_unknown_option_strings_list_the_allowed_values(tiny_model_dir, kwargs,
                                                        message) -> None:
    arguments = {'model': str(tiny_model_dir), 'device': 'cpu'}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ClipSegEngine(**arguments)


def test_auto_options_pick_cpu_float32_without_native_bfloat16(
        tiny_model_dir, caplog) -> None:
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with caplog.at_level(logging.WARNING, logger='clipseg_ros.core.options'):
        engine = ClipSegEngine(str(tiny_model_dir), cpu_features=NO_BFLOAT16)
    assert engine.device.type == 'cpu' and engine.dtype == torch.float32
    assert 'CUDA is not available' in caplog.text
    assert engine.compile_mode == 'none' and 'needs CUDA' not in caplog.text  # auto: no noise


@pytest.mark.parametrize('torch_default, usable, expected', [
    (2, 2, 2),    # this machine: too few cores to spare one
    (1, 1, 1),    # never zero
    (4, 3, 3),
    (4, 4, 3),    # from 4 cores on, one is left to ROS
    (8, 16, 8),   # SMT: torch's one-per-physical-core wins
    (8, 4, 3),    # a cpuset smaller than the machine
])
def test_auto_cpu_threads_spare_a_core_from_four(monkeypatch, torch_default, usable,
                                                 expected) -> None:
    monkeypatch.setattr(options_module, '_TORCH_DEFAULT_THREADS', torch_default)
    monkeypatch.setattr(options_module, 'usable_cpu_count', lambda: usable)
    assert cpu_thread_count(0) == expected
    assert cpu_thread_count(5) == 5  # an explicit count is taken as is


@pytest.mark.parametrize('bad', [-1, 1.5, True, '2'])
def test_bad_cpu_threads_are_refused(bad) -> None:
    with pytest.raises(ValueError, match='cpu_threads'):
        cpu_thread_count(bad)


def test_set_cpu_threads_applies_to_torch_and_opencv() -> None:
    before, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    try:
        for count in (1, 3):
            assert set_cpu_threads(count) == count
            assert torch.get_num_threads() == count and cv2.getNumThreads() == count
    finally:
        torch.set_num_threads(before)
        cv2.setNumThreads(before_cv)
