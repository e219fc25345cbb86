"""
From the model's probability maps to the frame: resizing, labels, threshold edges, memory,
and what the engine reports as inference time.
"""

import subprocess
import sys
import textwrap
import threading
import time

from clipseg_ros.core import frame_maps
from clipseg_ros.core.engine import ClipSegEngine
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def engine(tiny_model_dir) -> ClipSegEngine:
    return ClipSegEngine(str(tiny_model_dir), device='cpu', resolution=64)


def whole_frame_reference(probabilities: torch.Tensor, height: int, width: int,
                          threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All maps resized at once with torch's own interpolate, then the arg-max."""
    maps = interpolate(probabilities.unsqueeze(0), size=(height, width), mode='bilinear',
                       align_corners=False).squeeze(0)
    confidence, best = maps.max(dim=0)
    labels = torch.where(confidence >= threshold, best + 1, torch.zeros_like(best))
    return labels.numpy().astype(np.uint8), confidence.numpy(), maps.amax(dim=(1, 2)).numpy()


@pytest.mark.parametrize('count, height, width, slab', [
    (3, 480, 640, 1 << 22),     # one slab
    (16, 300, 410, 5000),       # many slabs, the last one partial
    (2, 40, 30, 7),             # one row a slab; output smaller than the maps
    (1, 64, 64, 1 << 22),       # identity size
])
@pytest.mark.parametrize('interpolate_kernels', [True, False], ids=['cpu-kernels', 'gathers'])
def test_slab_resize_equals_resizing_the_whole_frame(monkeypatch, count, height, width, slab,
                                                     interpolate_kernels):
    monkeypatch.setattr(frame_maps, 'SLAB_ELEMENTS', slab)
    # Both resizing paths on this machine: torch's kernels (the CPU's) and the gathers (CUDA's).
    monkeypatch.setattr(frame_maps, 'resize_with_interpolate', lambda device: interpolate_kernels)
    generator = torch.Generator().manual_seed(count)
    probabilities = torch.rand(count, 64, 64, generator=generator)
    maps = frame_maps.labels_at_frame_size(probabilities, height, width, 0.5, True)
    # The slabs compute the same bilinear weights as torch, but from positions rounded
    # differently in float32: values agree to a few 1e-6.
    labels, confidence, max_confidence = whole_frame_reference(probabilities, height, width, 0.5)
    np.testing.assert_allclose(maps.confidence.numpy(), confidence, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(maps.max_confidence.numpy(), max_confidence, atol=TOLERANCE, rtol=0)
    full = interpolate(probabilities.unsqueeze(0), size=(height, width), mode='bilinear',
                       align_corners=False).squeeze(0)
    np.testing.assert_allclose(maps.probabilities.numpy(), full.numpy(), atol=TOLERANCE, rtol=0)
    # Labels may differ only where two prompts tie within rounding, or at the threshold.
    sorted_maps = full.sort(dim=0, descending=True).values
    ambiguous = (np.abs(confidence - 0.5) < TOLERANCE)
    if count > 1:
        ambiguous |= (sorted_maps[0] - sorted_maps[1]).numpy() < TOLERANCE
    assert ((maps.labels.numpy() == labels) | ambiguous).all()
    assert ambiguous.mean() < 1e-3


@pytest.mark.parametrize('count', [1, 2, 5, 16])
def test_the_best_prompt_is_torchs_maximum_and_the_first_prompt_of_a_tie(count):
    generator = torch.Generator().manual_seed(count)
    # Values on a coarse grid, so that prompts tie often; a column-cropped view, as the
    # refinement's slabs are.
    slab = (torch.rand(count, 37, 53, generator=generator) * 4).round() / 4
    for maps in (slab, slab[:, :, 3:50]):
        value, index = frame_maps.best_prompt(maps)
        expected_value, expected_index = maps.max(dim=0)
        first = torch.argmax((maps == expected_value).to(torch.uint8), dim=0)
        assert value.dtype == torch.float32 and index.dtype == torch.uint8
        np.testing.assert_array_equal(value.numpy(), expected_value.numpy())
        np.testing.assert_array_equal(index.numpy(), first.numpy())


def test_threshold_one_labels_nothing_even_where_probability_rounds_to_one(tiny_model_dir):
    """Logits beyond ~17 give a float32 sigmoid of exactly 1.0; threshold 1 still means none."""
    # The torch back end: the test edits the torch weights after loading, which a network
    # converted at construction (openvino) would not see.
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu', resolution=64, backend='torch',
                           dtype='float32')
    with torch.no_grad():
        # Every logit exactly 60.0: the last layer outputs its bias alone.
        engine._model.decoder.transposed_convolution[-1].weight.zero_()
        engine._model.decoder.transposed_convolution[-1].bias.fill_(60.0)
    frame = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = engine.segment(frame, engine.text_prompts(['a cup']), threshold=1.0)
    assert (result.confidence == 1.0).any(), 'the test needs saturated probabilities'
    assert not result.labels.any()
    everything = engine.segment(frame, engine.text_prompts(['a cup']), threshold=0.999)
    assert everything.labels.all()


def test_inference_time_excludes_waiting_for_the_engine(engine):
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    prompts = engine.text_prompts(['a cup'])
    engine.segment(frame, prompts)  # warm-up
    held = threading.Event()
    release = threading.Event()

    def hold_the_engine():
        with engine._lock:
            held.set()
            release.wait(10.0)

    holder = threading.Thread(target=hold_the_engine)
    holder.start()
    assert held.wait(10.0)
    threading.Timer(1.5, release.set).start()
    started = time.perf_counter()
    result = engine.segment(frame, prompts)
    waited = time.perf_counter() - started
    holder.join()
    assert waited >= 1.5
    # The call took at least the 1.5 s the lock was held; the reported time is what came after.
    assert result.inference_seconds < waited - 1.0


MEMORY_PROBE = textwrap.dedent('''
    import resource, sys
    import numpy as np
    from clipseg_ros.core.engine import ClipSegEngine
    engine = ClipSegEngine(sys.argv[1], device='cpu', resolution=64)
    prompts = engine.text_prompts([f'prompt {i}' for i in range(16)])
    small = np.zeros((64, 64, 3), dtype=np.uint8)
    engine.segment(small, prompts)
    frame = np.zeros((4096, 4096, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.segment(frame, prompts)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
''')


def test_sixteen_prompts_on_a_4096_frame_stay_within_a_bounded_peak(tiny_model_dir):
    """
    The peak a 4096 x 4096 frame with 16 prompts adds stays far below the 1 GiB that resizing
    all maps at once takes (16 x 4096 x 4096 float32): the frame, its outputs and slabs only.
    """
    output = subprocess.run([sys.executable, '-c', MEMORY_PROBE, str(tiny_model_dir)],
                            capture_output=True, text=True, timeout=240, check=True)
    added = int(output.stdout.strip().splitlines()[-1])
    full_maps = 16 * 4096 * 4096 * 4
    # Frame (48 MiB), labels (16 MiB), confidence (64 MiB), the resized model input and the
    # slabs' temporaries: a few hundred MiB at most.
    assert added < full_maps / 2, f'segment added {added / 2**20:.0f} MiB at its peak'
