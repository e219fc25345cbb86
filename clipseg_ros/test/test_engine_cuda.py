"""GPU fast path checks; they run only where CUDA exists and are skipped elsewhere."""

import numpy as np
import pytest
import torch

from clipseg_ros.core.engine import ClipSegEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='no CUDA device on this machine: GPU fast path not run')

PROMPTS = ['a red square', 'sky', 'a wall']


def frames(count=4):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(count)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_half_precision_masks_agree_with_float32(tiny_model_dir, dtype):
    reference = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32')
    half = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype=dtype)
    reference_prompts = reference.text_prompts(PROMPTS)
    half_prompts = half.text_prompts(PROMPTS)
    for frame in frames():
        expected = reference.segment(frame, reference_prompts, return_probabilities=True)
        got = half.segment(frame, half_prompts, return_probabilities=True)
        for index in range(len(PROMPTS)):
            # Cut at the float32 median, so each mask is half the frame and sits where the
            # probabilities are densest: the cut most sensitive to rounding.
            cut = np.median(expected.probabilities[index])
            assert iou(expected.probabilities[index] >= cut,
                       got.probabilities[index] >= cut) >= 0.98, (dtype, index)


def test_float16_label_image_agrees_with_float32(tiny_model_dir):
    # The random tiny model's prompts differ little (on about half the pixels the best two are
    # within 0.01), so the arg-max label image is a strict test; bfloat16's 8-bit mantissa
    # flips those near-ties (IoU about 0.95 measured) and is checked per prompt above.
    reference = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32')
    half = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float16')
    reference_prompts = reference.text_prompts(PROMPTS)
    half_prompts = half.text_prompts(PROMPTS)
    for frame in frames():
        expected = reference.segment(frame, reference_prompts).labels
        got = half.segment(frame, half_prompts).labels
        for label in range(len(PROMPTS) + 1):
            assert iou(expected == label, got == label) >= 0.98, label


@pytest.mark.parametrize('mode', ['cuda_graphs', 'auto'])
def test_fast_paths_match_eager(tiny_model_dir, mode):
    eager = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32',
                          compile_mode='none')
    fast = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32',
                         compile_mode=mode)
    eager_prompts, fast_prompts = eager.text_prompts(PROMPTS), fast.text_prompts(PROMPTS)
    for frame in frames():
        expected = eager.segment(frame, eager_prompts, return_probabilities=True)
        got = fast.segment(frame, fast_prompts, return_probabilities=True)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-3)
    assert fast.compile_mode == 'cuda_graphs'


def test_statistics_computed_on_the_gpu_match_numpy(tiny_model_dir):
    from clipseg_ros.core.region_stats import region_stats
    engine = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32')
    prompts = engine.text_prompts(PROMPTS)
    for frame in frames():
        result = engine.segment(frame, prompts, threshold=0.4)
        expected = region_stats(result.labels, result.confidence, len(PROMPTS))
        np.testing.assert_array_equal(result.stats.pixel_count, expected.pixel_count)
        np.testing.assert_array_equal(result.stats.boxes, expected.boxes)
        np.testing.assert_allclose(result.stats.centroids, expected.centroids)
        np.testing.assert_allclose(result.stats.mean_confidence, expected.mean_confidence,
                                   rtol=1e-5)


def test_cuda_graphs_are_kept_per_prompt_count(tiny_model_dir):
    # A ~/segment call with one-off prompts between camera frames must not force recaptures.
    eager = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32',
                          compile_mode='none')
    fast = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32')
    frame = frames(1)[0]
    for texts in (PROMPTS, PROMPTS[:1], PROMPTS, PROMPTS[:1]):
        expected = eager.segment(frame, eager.text_prompts(texts), return_probabilities=True)
        got = fast.segment(frame, fast.text_prompts(texts), return_probabilities=True)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-3)
    assert len(fast._network.graphs) == 2 and fast.compile_mode == 'cuda_graphs'


def test_float16_probabilities_do_not_saturate_below_a_float32_one(tiny_model_dir):
    """Logits around 9 round to a probability of exactly 1.0 in float16, not in float32."""
    half = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float16',
                         compile_mode='none')
    with torch.no_grad():
        # Every logit exactly 9.0: the last layer outputs its bias alone.
        half._model.decoder.transposed_convolution[-1].weight.zero_()
        half._model.decoder.transposed_convolution[-1].bias.fill_(9.0)
    frame = frames(1)[0]
    result = half.segment(frame, half.text_prompts(PROMPTS[:1]), threshold=1.0,
                          return_probabilities=True)
    assert result.probabilities.dtype == np.float32
    assert result.probabilities.max() < 1.0
    assert not result.labels.any()


@pytest.mark.parametrize('with_depth', [False, True])
def test_refinement_on_the_gpu_matches_the_cpu(tiny_model_dir, with_depth):
    # The frame-size part runs as torch on the device, the cell statistics on the host: the
    # labels and confidence must be the CPU's (whose path uses OpenCV and numpy there) up to
    # the network's own rounding on the two devices.
    from clipseg_ros.core.refine import RefineSettings
    settings = RefineSettings(depth_weight=3.0 if with_depth else 0.0)
    cpu = ClipSegEngine(model=str(tiny_model_dir), device='cpu', dtype='float32')
    gpu = ClipSegEngine(model=str(tiny_model_dir), device='cuda', dtype='float32')
    cpu_prompts, gpu_prompts = cpu.text_prompts(PROMPTS), gpu.text_prompts(PROMPTS)
    rng = np.random.default_rng(5)
    for frame in frames():
        depth = (rng.uniform(0.5, 3.0, frame.shape[:2]).astype(np.float32)
                 if with_depth else None)
        expected = cpu.segment(frame, cpu_prompts, refine=settings, depth_m=depth)
        got = gpu.segment(frame, gpu_prompts, refine=settings, depth_m=depth)
        for label in range(len(PROMPTS) + 1):
            assert iou(expected.labels == label, got.labels == label) >= 0.98, label
        assert np.quantile(np.abs(expected.confidence - got.confidence), 0.99) < 1e-3
