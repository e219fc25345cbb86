"""
Back ends and precisions on the CPU: what auto picks (with faked CPU flags), what is refused
and why, each back end and precision against torch float32, and the compiled-model cache.
"""

import gc
import json
import logging
import os
import sys
import time
import weakref

from clipseg_ros.core.backends import resolve_runtime
from clipseg_ros.core.compiled_model_cache import (
    CompiledModelCache, MANIFEST, STAGING_PREFIX, STALE_SECONDS)
from clipseg_ros.core.cpu_features import CpuFeatures, host_cpu_features, parse_cpuinfo
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.model_loading import ModelLoadError
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import numpy as np
import pytest
from synthetic_frames import rgb_frame
import torch

WITH_BF16 = CpuFeatures('fake Xeon with AMX', frozenset({'avx2', 'avx512f', 'amx_bf16'}))
AVX512_BF16_ONLY = CpuFeatures('fake Zen 4', frozenset({'avx2', 'avx512f', 'avx512_bf16'}))
WITHOUT_BF16 = CpuFeatures('fake laptop', frozenset({'avx2'}))
HOST_BF16 = host_cpu_features().native_bfloat16
try:
    import openvino  # noqa: F401
    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason='OpenVINO is not installed')
# Largest probability difference to torch float32 on the tiny model (2 frames x 3 prompts).
# Measured here: OpenVINO float32 3e-7, torch bfloat16 0.007, OpenVINO bfloat16 0.007
# (full-size architecture: docs/cpu_backends.md). Bounds with margin:
MAX_DIFFERENCE = {'float32': 1e-4, 'bfloat16': 0.05}
CONFIGURATIONS = [
    ('torch', 'bfloat16'),
    pytest.param('openvino', 'float32', marks=needs_openvino),
    pytest.param('openvino', 'bfloat16', marks=needs_openvino),
]


def test_cpuinfo_flags_decide_native_bfloat16() -> None:
    text = 'processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n'
    features = parse_cpuinfo(text)
    assert features.model == 'Some CPU' and features.native_bfloat16
    assert 'avx512_bf16' in features.summary()
    assert not parse_cpuinfo('model name : Old CPU\nflags : fpu avx2\n').native_bfloat16
    assert WITH_BF16.native_bfloat16 and AVX512_BF16_ONLY.native_bfloat16
    assert not WITHOUT_BF16.native_bfloat16


@pytest.mark.parametrize('cpu, dtype', [(WITH_BF16, torch.bfloat16),
                                        (AVX512_BF16_ONLY, torch.bfloat16),
                                        (WITHOUT_BF16, torch.float32)])
@pytest.mark.parametrize('installed', [True, False])
def test_auto_picks_by_cpu_flags_and_openvino(cpu, dtype, installed, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger='clipseg_ros.core.backends'):
        runtime, mode = resolve_runtime('cpu', 'auto', 'auto', 0, 'auto', cpu,
                                        lambda: '2026.4.1' if installed else None)
    assert runtime.dtype == dtype and mode == 'auto'
    assert runtime.backend == ('openvino' if installed else 'torch')
    assert runtime.tensor_dtype == (torch.float32 if installed else dtype)
    # The one line saying what auto could not use, with the install command.
    assert ('pip install openvino' in caplog.text) == (not installed)
    assert ('pip install openvino' in runtime.summary()) == (not installed)
    assert cpu.model in runtime.summary()


def test_explicit_choices_are_taken_as_given() -> None:
    runtime, _ = resolve_runtime('cpu', 'float32', 'openvino', 0, 'auto', WITH_BF16,
                                 lambda: '2026.4.1')
    assert (runtime.backend, runtime.dtype) == ('openvino', torch.float32)
    runtime, _ = resolve_runtime('auto', 'bfloat16', 'torch', 0, 'auto', WITH_BF16,
                                 lambda: '2026.4.1')
    if not torch.cuda.is_available():
        assert (runtime.backend, runtime.device.type, runtime.dtype) == (
            'torch', 'cpu', torch.bfloat16)


def test_bfloat16_without_native_support_is_refused_with_the_reason(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match='natively.*fake laptop'):
        ClipSegEngine(str(tiny_model_dir), device='cpu', dtype='bfloat16', backend='torch',
                      cpu_features=WITHOUT_BF16)
    with pytest.raises(ValueError, match="dtype 'float16' is not supported on the CPU"):
        ClipSegEngine(str(tiny_model_dir), device='cpu', dtype='float16', backend='torch',
                      cpu_features=WITH_BF16)


def test_unknown_backend_lists_the_choices(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match='auto, torch, openvino'):
        ClipSegEngine(str(tiny_model_dir), device='cpu', backend='onnx')


def test_openvino_missing_is_refused_with_the_install_command(tiny_model_dir, monkeypatch,
                                                              caplog) -> None:
    monkeypatch.setitem(sys.modules, 'openvino', None)  # `import openvino` now fails
    with pytest.raises(ModelLoadError, match="OpenVINO is not installed.*'pip install openvino'"):
        ClipSegEngine(str(tiny_model_dir), device='cpu', backend='openvino')
    with caplog.at_level(logging.WARNING, logger='clipseg_ros.core.backends'):
        engine = ClipSegEngine(str(tiny_model_dir), device='cpu', backend='auto',
                               dtype='float32', resolution=64)
    assert engine.backend == 'torch' and 'pip install openvino' in caplog.text


def _frames() -> list[np.ndarray]:
    return [rgb_frame(96, 72, seed=1), rgb_frame(80, 64, seed=2)]


def _probabilities(engine: ClipSegEngine) -> np.ndarray:
    prompts = engine.text_prompts(['a red square', 'sky', 'a cup'])
    results = engine.segment_batch(_frames(), prompts, return_probabilities=True)
    return np.concatenate([r.probabilities.ravel() for r in results])


@pytest.mark.parametrize('backend, dtype', CONFIGURATIONS)
def test_each_backend_and_precision_is_close_to_torch_float32(tiny_model_dir, tmp_path,
                                                              backend, dtype) -> None:
    if dtype == 'bfloat16' and not HOST_BF16:
        pytest.skip('this CPU does not compute bfloat16 natively')
    reference = ClipSegEngine(str(tiny_model_dir), device='cpu', dtype='float32',
                              backend='torch', resolution=64)
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu', dtype=dtype, backend=backend,
                           resolution=64, compiled_model_cache=str(tmp_path))
    assert engine.backend == backend and engine.dtype == getattr(torch, dtype)
    calls_before = getattr(engine._network, 'calls', 0)
    difference = np.abs(_probabilities(engine) - _probabilities(reference)).max()
    assert 0.0 <= difference <= MAX_DIFFERENCE[dtype]
    if backend == 'openvino':  # it was OpenVINO that computed them: one call for the batch
        assert engine._network.calls == calls_before + 1
    # Image prompts and a resolution change go through the same back end.
    support = rgb_frame(64, 64, seed=3)
    image = [engine.image_prompt(support, label='thing')]
    image_reference = [reference.image_prompt(support, label='thing')]
    engine.resolution = 96
    reference.resolution = 96
    frame = _frames()[0]
    mine = engine.segment(frame, image, return_probabilities=True).probabilities
    theirs = reference.segment(frame, image_reference, return_probabilities=True).probabilities
    assert np.abs(mine - theirs).max() <= MAX_DIFFERENCE[dtype]


def _tiny_engine(seed: int, cache, resolution: int = 64) -> ClipSegEngine:
    model, tokenizer = build_random_model('tiny', seed=seed)
    return ClipSegEngine.from_model(model, tokenizer, PREPROCESSOR_CONFIG, device='cpu',
                                    dtype='float32', backend='openvino', resolution=resolution,
                                    compiled_model_cache=str(cache))


def _entries(cache) -> list:
    return sorted(path for path in cache.iterdir() if (path / MANIFEST).exists())


@needs_openvino
def test_cache_is_reused_rebuilt_when_corrupt_and_missed_by_another_model_or_size(
        tmp_path) -> None:
    cache = tmp_path / 'cache'
    first = _tiny_engine(0, cache)
    assert first._network.conversions == 1 and len(_entries(cache)) == 1
    expected = _probabilities(first)
    second = _tiny_engine(0, cache)
    assert second._network.conversions == 0  # read from the cache, not converted
    assert np.array_equal(_probabilities(second), expected)
    # A flipped byte in the weights: the checksum catches it, the entry is rebuilt.
    entry = _entries(cache)[0]
    weights = entry / 'model.bin'
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    third = _tiny_engine(0, cache)
    assert third._network.conversions == 1
    assert np.array_equal(_probabilities(third), expected)
    assert _tiny_engine(0, cache)._network.conversions == 0  # the rebuilt entry is good
    # Files that match their checksums but that OpenVINO cannot read: rebuilt too.
    (entry / 'model.xml').write_text('<net>not a model</net>')
    manifest = json.loads((entry / MANIFEST).read_text())
    from clipseg_ros.core.compiled_model_cache import file_sha256
    manifest['files']['model.xml'] = file_sha256(entry / 'model.xml')
    (entry / MANIFEST).write_text(json.dumps(manifest))
    assert _tiny_engine(0, cache)._network.conversions == 1
    # A truncated manifest.
    (entry / MANIFEST).write_text('{"key": ')
    assert _tiny_engine(0, cache)._network.conversions == 1
    # Other weights, another input size: other entries.
    assert _tiny_engine(1, cache)._network.conversions == 1
    assert _tiny_engine(0, cache, resolution=96)._network.conversions == 1
    assert len(_entries(cache)) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith('.incomplete')]


@needs_openvino
def test_an_unwritable_cache_only_costs_the_conversion(tmp_path) -> None:
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    engine = _tiny_engine(0, blocker / 'cache')
    assert engine._network.conversions == 1 and _probabilities(engine).size
    no_cache = _tiny_engine(0, '')
    assert no_cache._network.cache is None and no_cache._network.conversions == 1


@needs_openvino
def test_release_frees_the_torch_model_and_the_compiled_model(tiny_model_dir, tmp_path) -> None:
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu', dtype='float32',
                           backend='openvino', resolution=64, compiled_model_cache=str(tmp_path))
    prompts = engine.text_prompts(['a cup'])
    assert engine.segment(_frames()[0], prompts).labels.shape == (72, 96)
    model = weakref.ref(engine._model)
    engine.release()
    gc.collect()
    assert model() is None, 'the released engine still holds the torch model'
    assert engine._network._request is None
    with pytest.raises(RuntimeError, match='released'):
        engine.segment(_frames()[0], prompts)


def _writer(text: str):
    return lambda folder: (folder / 'model.xml').write_text(text)


def test_a_writer_that_finishes_second_keeps_the_entry_published_first(tmp_path) -> None:
    cache = CompiledModelCache(tmp_path)
    fields = {'input_size': '64'}

    def slow_writer(folder):
        # While this process converts, another publishes the same key (its files may be
        # being read by a third process by now).
        assert cache.store(fields, _writer('first')) == cache.entry(fields)
        (folder / 'model.xml').write_text('second')

    published = cache.entry(fields)
    assert cache.store(fields, slow_writer) == published
    assert (published / 'model.xml').read_text() == 'first'
    assert cache.lookup(fields) == published
    assert [p.name for p in tmp_path.iterdir()] == [published.name]  # no staging left


def test_folders_left_half_written_are_deleted_once_stale(tmp_path) -> None:
    cache = CompiledModelCache(tmp_path)
    stale = tmp_path / f'{STAGING_PREFIX}died'
    stale.mkdir()
    (stale / 'model.bin').write_bytes(b'half a model')
    old = time.time() - 2 * STALE_SECONDS
    os.utime(stale, (old, old))
    being_written = tmp_path / f'{STAGING_PREFIX}busy'
    being_written.mkdir()
    entry = cache.store({'input_size': '64'}, _writer('model'))
    assert entry is not None and entry.is_dir()
    assert not stale.exists(), 'a dead writer\'s folder is kept forever'
    assert being_written.is_dir(), 'a folder another process is writing now was deleted'


def test_a_manifest_naming_missing_files_is_rebuilt(tmp_path) -> None:
    cache = CompiledModelCache(tmp_path)
    fields = {'input_size': '64'}
    entry = cache.store(fields, _writer('model'))
    (entry / 'model.xml').unlink()
    assert cache.lookup(fields) is None and not entry.exists()
    assert cache.store(fields, _writer('model')) == entry and cache.lookup(fields) == entry
