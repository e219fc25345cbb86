"""
Tests of the CLIPSeg engine on a tiny random model loaded through the real loading path.

The reference everywhere is transformers' own ``CLIPSegForImageSegmentation`` forward on the
same weights, run the naive way (the frame repeated once per prompt). Support images for image
prompts are engineered on the reference side by the tests' own implementation of the recipe
(``prompt_reference``), never by the package's.
"""

from engine_reference import (  # noqa: F401 (engine, frame, reference: pytest fixtures)
    engine, frame, HAVE_PIL, reference, reference_pixel_values, reference_prompt_pixels,
    reference_text_inputs, supports, TEXTS, TOLERANCE)
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate


# ---------------------------------------------------------------------- equivalence
#
# How the comparison is kept fair: transformers' processor resizes with PIL, the engine in
# torch; the two interpolations differ slightly. The frame is therefore given at the model
# resolution (352x352), where PIL's resize is an identity, so both sides see the same pixels
# and any difference comes from the model path (shared encoder pass, skipped layers, batched
# decoder). For other frame sizes (see the non-square test) the reference forward is fed the
# engine's own pixel values and its probabilities are resized like the engine's; the 640x480
# test compares the whole pipeline, the processor's resize included, with a wider tolerance.


@pytest.mark.parametrize('count', [1, 3])
def test_text_prompts_match_transformers_forward(engine, reference, tiny_model_dir, frame,
                                                 count) -> None:
    texts = TEXTS[:count]
    result = engine.segment(frame, engine.text_prompts(texts), return_probabilities=True)
    inputs = reference_text_inputs(tiny_model_dir, texts)
    pixel_values = reference_pixel_values(tiny_model_dir, [frame] * count)
    with torch.no_grad():
        logits = reference(pixel_values=pixel_values, **inputs).logits
    expected = torch.sigmoid(logits.reshape(count, 352, 352)).numpy()
    assert result.probabilities.shape == (count, 352, 352)
    assert result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)
    # The random model must not be trivially flat, or the comparison would prove little.
    assert expected.std() > 0.05


@pytest.mark.parametrize('count', [1, 3])
def test_image_prompts_match_transformers_forward(engine, reference, tiny_model_dir, frame,
                                                  count) -> None:
    pairs = supports()[:count]
    prompts = [engine.image_prompt(image, mask, label=f'object {i}')
               for i, (image, mask) in enumerate(pairs)]
    assert [p.kind for p in prompts] == ['image'] * count
    result = engine.segment(frame, prompts, return_probabilities=True)
    with torch.no_grad():
        logits = reference(
            pixel_values=reference_pixel_values(tiny_model_dir, [frame] * count),
            conditional_pixel_values=reference_prompt_pixels(tiny_model_dir, pairs)).logits
    expected = torch.sigmoid(logits.reshape(count, 352, 352)).numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)


def test_image_and_text_prompt_is_the_weighted_sum(engine, reference, tiny_model_dir,
                                                   frame) -> None:
    image, mask = supports()[0]
    prompt = engine.image_prompt(image, mask, text='a cat', text_weight=0.25)
    assert prompt.label == 'a cat'
    result = engine.segment(frame, [prompt], return_probabilities=True)
    engineered = reference_prompt_pixels(tiny_model_dir, [(image, mask)])
    inputs = reference_text_inputs(tiny_model_dir, ['a cat'])
    with torch.no_grad():
        image_embedding = reference.get_conditional_embeddings(
            batch_size=1, conditional_pixel_values=engineered)
        text_embedding = reference.get_conditional_embeddings(batch_size=1, **inputs)
        mixed = 0.75 * image_embedding + 0.25 * text_embedding
        logits = reference(
            pixel_values=reference_pixel_values(tiny_model_dir, [frame]),
            conditional_embeddings=mixed).logits
    torch.testing.assert_close(prompt.embedding, mixed[0], rtol=0, atol=1e-5)
    expected = torch.sigmoid(logits.reshape(1, 352, 352)).numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)


def test_non_square_frame_keeps_its_size_and_matches_logits(
        engine, reference, tiny_model_dir) -> None:
    frame = np.random.default_rng(11).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    result = engine.segment(frame, engine.text_prompts(TEXTS), return_probabilities=True)
    assert result.labels.shape == (240, 320) and result.labels.dtype == np.uint8
    assert result.confidence.shape == (240, 320) and result.confidence.dtype == np.float32
    assert result.probabilities.shape == (3, 240, 320)
    assert result.max_confidence.shape == (3,) and result.max_confidence.dtype == np.float32
    pixel_values = engine.preprocess(frame)
    assert tuple(pixel_values.shape) == (1, 3, 352, 352)
    with torch.no_grad():
        logits = reference(pixel_values=pixel_values.repeat(3, 1, 1, 1),
                           **reference_text_inputs(tiny_model_dir, TEXTS)).logits
    expected = interpolate(torch.sigmoid(logits).unsqueeze(0), size=(240, 320),
                           mode='bilinear', align_corners=False)[0].numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.skipif(not HAVE_PIL, reason='CLIPSegProcessor needs PIL (or torchvision) here')
def test_engine_preprocessing_matches_the_processor(engine, tiny_model_dir, frame) -> None:
    from transformers import CLIPSegProcessor
    processor = CLIPSegProcessor.from_pretrained(tiny_model_dir)
    expected = processor(images=frame, return_tensors='pt')['pixel_values']
    torch.testing.assert_close(engine.preprocess(frame), expected, rtol=0, atol=1e-5)


# The processor resizes with PIL, which rounds its output to uint8 and uses fixed-point
# weights; the engine resizes in float32 with torch (antialiased, like PIL's filter). On a
# 640x480 frame the two differ by up to 0.98 grey levels (measured), i.e. up to one grey level,
# 1 / 255 / std = 0.0175 for the smallest std (0.224): PIXEL_TOLERANCE is just above that.
# Through the tiny random model (probabilities spread over (0, 1), std 0.12) those pixel
# differences move the probabilities by up to 0.0075 on this test's frame (0.0068 on another);
# fed identical pixels the two forwards agree within 1e-6, so the gap is all preprocessing.
PIXEL_TOLERANCE = 0.018
END_TO_END_TOLERANCE = 0.009


@pytest.mark.skipif(not HAVE_PIL, reason='CLIPSegProcessor needs PIL (or torchvision) here')
def test_640x480_frame_matches_processor_and_model_end_to_end(engine, reference,
                                                              tiny_model_dir) -> None:
    from transformers import CLIPSegProcessor
    processor = CLIPSegProcessor.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(17)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    support = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    mask = np.zeros((480, 640), dtype=bool)
    mask[60:200, 380:600] = True  # off-centre, wider than high

    pixel_values = processor(images=frame, return_tensors='pt')['pixel_values']
    assert tuple(pixel_values.shape) == (1, 3, 352, 352)
    ours = engine.preprocess(frame)
    torch.testing.assert_close(ours, pixel_values, rtol=0, atol=PIXEL_TOLERANCE)
    # The bound is tight: rounding alone differs by half a grey level somewhere.
    assert (ours - pixel_values).abs().max() > 0.5 / 255 / 0.229

    prompts = engine.text_prompts(TEXTS) + [engine.image_prompt(support, mask, label='box')]
    result = engine.segment(frame, prompts, return_probabilities=True)
    inputs = processor(text=TEXTS, images=[frame] * len(TEXTS), padding=True,
                       return_tensors='pt')
    with torch.no_grad():
        # The position embeddings are trained for 224 px; 352 px needs them interpolated.
        text_logits = reference(**inputs, interpolate_pos_encoding=True).logits
        image_logits = reference(
            pixel_values=pixel_values,
            conditional_pixel_values=reference_prompt_pixels(tiny_model_dir, [(support, mask)]),
            interpolate_pos_encoding=True).logits
    logits = torch.cat([text_logits, image_logits.reshape(1, 352, 352)])
    # CLIPSeg predicts at 352x352; the engine's probabilities are resized back to the frame.
    expected = interpolate(torch.sigmoid(logits).unsqueeze(0), size=(480, 640),
                           mode='bilinear', align_corners=False)[0].numpy()
    assert result.probabilities.shape == (4, 480, 640)
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=END_TO_END_TOLERANCE)
    assert expected.std() > 0.05


def test_only_the_needed_encoder_layers_run(engine, frame) -> None:
    layers = engine._model.clip.vision_model.encoder.layers
    calls = [0] * len(layers)
    handles = [layer.register_forward_hook(
        lambda module, args, output, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)]
    try:
        engine.segment(frame, engine.text_prompts(TEXTS))
    finally:
        for handle in handles:
            handle.remove()
    # extract_layers (1, 2, 3) of 5 layers: one pass through layers 0..3, layer 4 skipped.
    assert calls == [1, 1, 1, 1, 0]


def test_preprocessing_constants_come_from_the_processor_config(engine, tiny_model_dir,
                                                                frame) -> None:
    config = engine.preprocess_config
    assert config.size == 352
    assert config.mean == pytest.approx((0.485, 0.456, 0.406))
    assert config.std == pytest.approx((0.229, 0.224, 0.225))
    assert config.rescale_factor == pytest.approx(1 / 255)
    torch.testing.assert_close(
        engine.preprocess(frame), reference_pixel_values(tiny_model_dir, [frame]),
        rtol=0, atol=1e-5)


def test_a_batch_of_frames_matches_the_frames_one_by_one(engine, reference, tiny_model_dir,
                                                         frame) -> None:
    """Several cameras' frames (different sizes) in one encoder pass: each as on its own,
    and each as transformers' own forward gives it."""
    rng = np.random.default_rng(7)
    frames = [frame, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
              rng.integers(0, 256, (360, 500, 3), dtype=np.uint8)]
    texts = ['a red square', 'sky', 'grass']
    prompts = engine.text_prompts(texts)
    batch = engine.segment_batch(frames, prompts, threshold=0.3, return_probabilities=True)
    assert len(batch) == len(frames)
    for image, batched in zip(frames, batch):
        alone = engine.segment(image, prompts, threshold=0.3, return_probabilities=True)
        assert batched.labels.shape == image.shape[:2]
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-5)
        assert (batched.labels != alone.labels).mean() < 1e-3
        assert batched.stats.pixel_count.tolist() == \
            region_stats_of(batched.labels, len(texts)).tolist()
    # The reference: the processor and transformers' forward on each frame, one by one.
    from transformers import CLIPSegProcessor
    processor = CLIPSegProcessor.from_pretrained(tiny_model_dir)
    for image, batched in zip(frames, batch):
        inputs = processor(text=texts, images=[image] * len(texts), padding=True,
                           return_tensors='pt')
        with torch.no_grad():
            logits = reference(**inputs, interpolate_pos_encoding=True).logits
        expected = interpolate(torch.sigmoid(logits).unsqueeze(0), size=image.shape[:2],
                               mode='bilinear', align_corners=False)[0].numpy()
        np.testing.assert_allclose(batched.probabilities, expected, rtol=0,
                                   atol=END_TO_END_TOLERANCE)
    with pytest.raises(ValueError, match='no image given'):
        engine.segment_batch([], prompts)


def region_stats_of(labels: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=count + 1)[1:count + 1]
