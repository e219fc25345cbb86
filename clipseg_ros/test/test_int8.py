"""
dtype int8 on the OpenVINO back end, with tiny models: when it is taken and when refused (faked
CPU flags, the torch back end), the ISA cap, quantization against float32, the cache (reused,
another calibration set quantized again from the cached float model), and calibration folders
that cannot be used.
"""

import logging

import cv2
from clipseg_ros.core.backends import resolve_runtime
from clipseg_ros.core.cpu_features import CpuFeatures, host_cpu_features
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.int8_calibration import (
    CalibrationError, folder_calibration_set, frames_calibration_set, MAX_CALIBRATION_FRAMES)
from clipseg_ros.core.model_loading import ModelLoadError
from clipseg_ros.core.options import resolve_dtype
from clipseg_ros.tools.calibration_scenes import synthetic_calibration_set
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import numpy as np
import pytest
import torch

try:
    import nncf  # noqa: F401
    import openvino  # noqa: F401
    HAVE_INT8 = True
except ImportError:
    HAVE_INT8 = False
needs_int8 = pytest.mark.skipif(not HAVE_INT8, reason='OpenVINO or NNCF is not installed')
# Faked flags get int8 accepted, but compiling the quantized graph needs the real instructions
# (under an AVX2-only oneDNN it did not compile: docs/cpu_backends.md).
needs_native_int8 = pytest.mark.skipif(not host_cpu_features().native_int8,
                                       reason='this CPU has no VNNI or AMX-INT8')

AVX_VNNI = CpuFeatures('fake Alder Lake', frozenset({'avx2', 'avx_vnni'}))
AVX512_VNNI = CpuFeatures('fake Ice Lake', frozenset({'avx2', 'avx512f', 'avx512_vnni'}))
AMX = CpuFeatures('fake Sapphire Rapids', frozenset(
    {'avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8', 'amx_tile'}))
NO_VNNI = CpuFeatures('fake Skylake', frozenset({'avx2', 'avx512f'}))
# Largest probability difference of int8 to float32 on the tiny model, 2 frames x 2 prompts
# (measured here: about 0.04; the full-size model: docs/cpu_backends.md). Bound with margin:
MAX_INT8_DIFFERENCE = 0.15
PROMPTS = ['a red circle', 'a blue square']
MATRIX_LAYERS = ('FullyConnected', 'MatMul', 'Convolution')


def _installed() -> str:
    return '2026.4.1'


@pytest.mark.parametrize('cpu, float_dtype', [(AVX_VNNI, torch.float32),
                                              (AVX512_VNNI, torch.float32),
                                              (AMX, torch.bfloat16)])
def test_int8_is_taken_on_cpus_with_int8_dot_products(cpu, float_dtype) -> None:
    for backend in ('openvino', 'auto'):
        runtime, _ = resolve_runtime('auto', 'int8', backend, 0, 'auto', cpu, _installed)
        assert (runtime.backend, runtime.dtype) == ('openvino', torch.int8)
        assert runtime.device.type == 'cpu' and runtime.tensor_dtype == torch.float32
        # The rest of the network in the best float precision the CPU has.
        assert runtime.float_dtype == float_dtype
        assert f"int8 ({str(float_dtype).replace('torch.', '')} elsewhere)" in runtime.summary()
    # auto never picks int8: it changes the outputs.
    runtime, _ = resolve_runtime('cpu', 'auto', 'auto', 0, 'auto', cpu, _installed)
    assert runtime.dtype != torch.int8


def test_int8_is_refused_without_vnni_and_on_torch_with_the_reason() -> None:
    with pytest.raises(ValueError, match='avx_vnni or avx512_vnni.*amx_int8.*fake Skylake'):
        resolve_runtime('cpu', 'int8', 'openvino', 0, 'auto', NO_VNNI, _installed)
    with pytest.raises(ValueError, match="openvino back end only, not on torch"):
        resolve_runtime('cpu', 'int8', 'torch', 0, 'auto', AMX, _installed)
    # auto without OpenVINO falls back to torch, which cannot run int8: said with the command.
    with pytest.raises(ValueError, match='pip install openvino'):
        resolve_runtime('cpu', 'int8', 'auto', 0, 'auto', AMX, lambda: None)
    with pytest.raises(ValueError, match='runs on the CPU'):
        resolve_dtype('int8', torch.device('cuda'), AMX)


def test_int8_without_nncf_names_the_install_command(monkeypatch) -> None:
    import clipseg_ros.core.backends as backends
    monkeypatch.setattr(backends, 'nncf_version', lambda: None)
    monkeypatch.setattr(backends.check_int8_backend, '__defaults__', (backends.nncf_version,))
    with pytest.raises(ModelLoadError, match='pip install nncf'):
        resolve_runtime('cpu', 'int8', 'openvino', 0, 'auto', AMX, _installed)


@pytest.mark.parametrize('cap, native_int8, native_bfloat16', [
    ('AVX2', False, False), ('AVX2_VNNI', True, False), ('AVX512_CORE_VNNI', True, False),
    ('AVX512_CORE_BF16', True, True), ('AVX512_CORE_AMX', True, True), ('ALL', True, True),
    (None, True, True)])
def test_an_isa_cap_removes_the_flags_above_it(cap, native_int8, native_bfloat16) -> None:
    host = CpuFeatures('Xeon', AMX.flags | {'avx_vnni'})
    capped = host.capped(cap)
    assert (capped.native_int8, capped.native_bfloat16) == (native_int8, native_bfloat16)
    assert ('avx2' in capped.flags) and (f'={cap}' in capped.summary()) == (
        cap not in (None, 'ALL'))


def _tiny_engine(dtype: str, cache, calibration=None, seed: int = 0,
                 cpu: CpuFeatures = AVX512_VNNI) -> ClipSegEngine:
    model, tokenizer = build_random_model('tiny', seed=seed)
    return ClipSegEngine.from_model(model, tokenizer, PREPROCESSOR_CONFIG, device='cpu',
                                    dtype=dtype, backend='openvino', resolution=64,
                                    compiled_model_cache=str(cache), cpu_features=cpu,
                                    int8_calibration=calibration)


def _calibration(first_seed: int, count: int = 3):
    frames = [render_scene(first_seed + i, 96, 72).rgb for i in range(count)]
    return frames_calibration_set(frames, f'{count} test scenes')


def _probabilities(engine: ClipSegEngine) -> np.ndarray:
    prompts = engine.text_prompts(PROMPTS)
    frames = [render_scene(9_500_000 + i, 96, 72).rgb for i in range(2)]
    return np.stack([r.probabilities for r in engine.segment_batch(
        frames, prompts, return_probabilities=True)])


@needs_int8
@needs_native_int8
def test_int8_is_quantized_once_cached_and_close_to_float32(tmp_path, caplog) -> None:
    cache = tmp_path / 'cache'
    calibration = _calibration(7_100_000)
    with caplog.at_level(logging.INFO, logger='clipseg_ros.core'):
        int8 = _tiny_engine('int8', cache, calibration)
    network = int8._network
    assert int8.dtype == torch.int8 and 'int8 (float32 elsewhere)' in int8.runtime_summary
    assert (network.conversions, network.quantizations) == (1, 1)
    # The first quantization says what it does and how long it will take, then took.
    assert 'int8: quantizing in-memory model at 64 px with NNCF' in caplog.text
    assert '3 calibration samples (3 test scenes); this takes about' in caplog.text
    assert 'int8: quantized in-memory model at 64 px in' in caplog.text
    # The compiled model holds int8 layers; the float32 one none.
    float32 = _tiny_engine('float32', cache)
    assert float32._network.conversions == 0  # the float entry int8 stored on the way
    assert _int8_layers(network) > 0 and _int8_layers(float32._network) == 0
    difference = np.abs(_probabilities(int8) - _probabilities(float32)).max()
    assert 0.0 < difference <= MAX_INT8_DIFFERENCE
    # The same model and calibration set: read from the cache, nothing converted or quantized.
    again = _tiny_engine('int8', cache, _calibration(7_100_000))
    assert (again._network.conversions, again._network.quantizations) == (0, 0)
    assert np.array_equal(_probabilities(again), _probabilities(int8))
    # Another calibration set is another entry, quantized from the cached float model.
    other = _tiny_engine('int8', cache, _calibration(7_200_000))
    assert (other._network.conversions, other._network.quantizations) == (0, 1)
    assert len([p for p in cache.iterdir() if not p.name.startswith('.')]) == 3


def _int8_layers(network) -> int:
    """Matrix multiplications and convolutions the compiled model computes in int8."""
    runtime = network._request.get_compiled_model().get_runtime_model()
    return sum(1 for op in runtime.get_ops()
               if op.get_rt_info()['layerType'].astype(str) in MATRIX_LAYERS
               and op.get_rt_info()['runtimePrecision'].astype(str) in ('i8', 'u8'))


def _write(path, image) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def test_a_calibration_folder_is_read_checked_and_sampled(tmp_path) -> None:
    for index in range(MAX_CALIBRATION_FRAMES + 6):
        _write(tmp_path / f'frame_{index:03d}.png', render_scene(7_300_000 + index % 3, 48, 40).rgb)
    (tmp_path / 'notes.txt').write_text('not an image, not looked at')
    calibration = folder_calibration_set(tmp_path)
    samples = list(calibration.samples())
    assert calibration.count == len(samples) == MAX_CALIBRATION_FRAMES
    assert all(frame.shape == (40, 48, 3) and prompts for frame, prompts in samples)
    assert folder_calibration_set(tmp_path).digest == calibration.digest
    _write(tmp_path / 'frame_000.png', render_scene(7_400_000, 48, 40).rgb)
    assert folder_calibration_set(tmp_path).digest != calibration.digest


def _bad_folders(root):
    """(folder, what the refusal says) for each way a calibration folder can be unusable."""
    empty = root / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no images here')
    unreadable = root / 'unreadable'
    unreadable.mkdir()
    _write(unreadable / 'a.png', render_scene(7_500_000, 48, 40).rgb)
    (unreadable / 'b.jpg').write_bytes(b'\xff\xd8 these bytes are no JPEG')
    tiny = root / 'tiny'
    tiny.mkdir()
    _write(tiny / 'a.png', render_scene(7_500_000, 48, 40).rgb)
    _write(tiny / 'thumb.png', np.zeros((8, 12, 3), np.uint8))
    a_file = root / 'a_file.png'
    _write(a_file, render_scene(7_500_000, 48, 40).rgb)
    return [(root / 'missing', 'does not exist'), (a_file, 'is not a folder'),
            (empty, 'holds no images'), (unreadable, 'b.jpg is not an image'),
            (tiny, 'thumb.png is 12x8')]


def test_unusable_calibration_folders_are_refused_with_the_reason(tmp_path) -> None:
    for folder, reason in _bad_folders(tmp_path):
        with pytest.raises(CalibrationError, match=reason):
            folder_calibration_set(folder)
        # The engine refuses before loading the model; float dtypes ignore the setting.
        with pytest.raises(ValueError, match=reason):
            _tiny_engine('int8', tmp_path / 'cache', str(folder))
    with pytest.raises(ValueError, match='needs calibration frames'):
        _tiny_engine('int8', tmp_path / 'cache', '')


def test_the_synthetic_set_is_keyed_by_its_scenes_and_made_only_when_asked() -> None:
    first = synthetic_calibration_set(2)
    assert first.digest == synthetic_calibration_set(2).digest
    assert first.digest != synthetic_calibration_set(3).digest
    samples = list(first.samples())
    assert len(samples) == 2 and all(f.shape == (480, 640, 3) and p for f, p in samples)
    assert any('circle' in t or 'square' in t or 'triangle' in t or 'star' in t
               for _, prompts in samples for t in prompts)


# Largest probability difference of int8 to float32 on the full-size architecture (random
# weights), 2 held-out scenes x 2 prompts at 160 px. Bound with margin over what was measured
# (docs/cpu_backends.md):
MAX_FULL_SIZE_INT8_DIFFERENCE = 0.2


@needs_int8
@needs_native_int8
def test_int8_on_the_full_size_architecture_stays_close_to_float32(tmp_path) -> None:
    """The real checkpoint's layer sizes: what the rounding of its 12 ViT-B/16 layers costs."""
    engines = {}
    for dtype in ('float32', 'int8'):
        model, tokenizer = build_random_model('full', seed=0)
        engines[dtype] = ClipSegEngine.from_model(
            model, tokenizer, PREPROCESSOR_CONFIG, device='cpu', dtype=dtype,
            backend='openvino', resolution=160, compiled_model_cache=str(tmp_path),
            cpu_features=AVX512_VNNI,
            int8_calibration=_calibration(7_300_000, 4) if dtype == 'int8' else None)
    assert _int8_layers(engines['int8']._network) > 0
    difference = np.abs(_probabilities(engines['int8']) -
                        _probabilities(engines['float32'])).max()
    print(f'full-size architecture, int8 against float32: largest probability difference '
          f'{difference:.4f}')
    assert 0.0 < difference <= MAX_FULL_SIZE_INT8_DIFFERENCE
