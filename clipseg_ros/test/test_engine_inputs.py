"""
Tests of the engine's inputs, options and resources on a tiny random model: the prompt cache,
label semantics, every refused input, resolution, threads, release. The comparisons with
transformers' own forward are in ``test_engine.py``.
"""

import json
import logging
from pathlib import Path
import shutil
import string
import threading

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.model_loading import PreprocessConfig
from clipseg_ros.core.prompts import Prompt
from clipseg_ros.core.results import SegmentationResult
from clipseg_ros.tools.tiny_model import write_tiny_model
from engine_reference import (  # noqa: F401 (engine, frame, reference: pytest fixtures)
    engine, frame, HAVE_PIL, reference, reference_text_inputs, supports, TEXTS, TOLERANCE)
import numpy as np
import pytest
from safetensors.torch import load_file
import torch
from torch.nn.functional import interpolate
from transformers import AutoTokenizer, CLIPSegForImageSegmentation


def test_text_embeddings_are_cached_by_string(engine) -> None:
    text_model = engine._model.clip.text_model
    batches = []
    handle = text_model.register_forward_hook(
        lambda module, args, kwargs, output: batches.append(kwargs['input_ids'].clone()),
        with_kwargs=True)
    try:
        start = engine.text_encoder_calls
        first = engine.text_prompts(['cache a', 'cache b'])
        assert engine.text_encoder_calls == start + 1
        second = engine.text_prompts(['cache b', 'cache c'])
        assert engine.text_encoder_calls == start + 2
        engine.text_prompts(['cache a', 'cache b', 'cache c', 'cache a'])
        assert engine.text_encoder_calls == start + 2
    finally:
        handle.remove()
    # The second encoder pass saw only the new string.
    assert [batch.shape[0] for batch in batches] == [2, 1]
    tokenizer = engine._tokenizer
    expected = tokenizer(['cache c'], return_tensors='pt')['input_ids']
    torch.testing.assert_close(batches[1], expected)
    assert second[0].embedding is first[1].embedding
    assert [p.label for p in second] == ['cache b', 'cache c']
    assert all(p.kind == 'text' for p in first + second)
    assert second[1].embedding.shape == (engine.embedding_size,)
    assert second[1].embedding.dtype == engine.dtype


def test_batched_and_single_text_embeddings_agree(tiny_model_dir) -> None:
    together = ClipSegEngine(str(tiny_model_dir), device='cpu')
    alone = ClipSegEngine(str(tiny_model_dir), device='cpu')
    batch = together.text_prompts(['x', 'a much longer prompt with many words'])
    single = alone.text_prompts(['x'])
    torch.testing.assert_close(batch[0].embedding, single[0].embedding, rtol=0, atol=1e-6)


def test_image_prompt_default_labels(engine) -> None:
    image, mask = supports()[1]
    assert engine.image_prompt(image, mask).label == 'image'
    assert engine.image_prompt(image, None, label='mug').label == 'mug'


@pytest.mark.parametrize('weight', [-0.1, 1.5, float('nan'), '0.5', True])
def test_bad_text_weight_is_refused(engine, weight) -> None:
    image, mask = supports()[0]
    with pytest.raises(ValueError, match='text_weight'):
        engine.image_prompt(image, mask, text='a cat', text_weight=weight)


def test_image_prompt_validates_its_inputs(engine) -> None:
    image, mask = supports()[0]
    with pytest.raises(ValueError, match='selects no pixel'):
        engine.image_prompt(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match='does not match'):
        engine.image_prompt(image, mask[:10])
    with pytest.raises(ValueError, match='uint8'):
        engine.image_prompt(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match='text'):
        engine.image_prompt(image, mask, text='   ')


def test_label_and_confidence_semantics(engine, frame) -> None:
    prompts = engine.text_prompts(TEXTS)
    result = engine.segment(frame, prompts, threshold=0.5, return_probabilities=True)
    assert isinstance(result, SegmentationResult)
    assert result.inference_seconds > 0
    probs = result.probabilities
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    np.testing.assert_allclose(result.confidence, probs.max(axis=0))
    np.testing.assert_allclose(result.max_confidence, probs.max(axis=(1, 2)))
    winner = probs.argmax(axis=0) + 1
    confident = result.confidence >= 0.5
    np.testing.assert_array_equal(result.labels[confident], winner[confident])
    assert not result.labels[~confident].any()
    assert set(np.unique(result.labels)) <= set(range(len(prompts) + 1))
    # The tiny model's maps are mixed, so the threshold really separates something.
    assert 0 < confident.mean() < 1


def test_threshold_zero_leaves_no_background(engine, frame) -> None:
    prompts = engine.text_prompts(TEXTS)
    result = engine.segment(frame, prompts, threshold=0.0, return_probabilities=True)
    assert result.labels.min() >= 1
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0) + 1)
    # Every prompt wins somewhere on the random frame, so all labels 1..N occur.
    assert set(np.unique(result.labels)) == {1, 2, 3}


def test_threshold_one_is_all_background(engine, frame) -> None:
    result = engine.segment(frame, engine.text_prompts(TEXTS), threshold=1.0)
    assert result.probabilities is None
    assert result.confidence.max() < 1.0
    assert not result.labels.any()


def test_single_prompt_shapes(engine) -> None:
    frame = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    result = engine.segment(frame, engine.text_prompts(['a cat']), threshold=0.0,
                            return_probabilities=True)
    assert result.probabilities.shape == (1, 37, 53)
    assert result.max_confidence.shape == (1,)
    assert np.all(result.labels == 1)


def test_non_contiguous_frames_are_accepted(engine, frame) -> None:
    prompts = engine.text_prompts(TEXTS)
    flipped = frame[:, :, ::-1]
    expected = engine.segment(np.ascontiguousarray(flipped), prompts, threshold=0.0)
    result = engine.segment(flipped, prompts, threshold=0.0)
    np.testing.assert_array_equal(result.labels, expected.labels)


@pytest.mark.parametrize('image, message', [
    ([[0, 0, 0]], 'numpy array'),
    (np.zeros((8, 8, 3), dtype=np.float32), 'uint8'),
    (np.zeros((8, 8, 3), dtype=np.uint16), 'uint8'),
    (np.zeros((8, 8), dtype=np.uint8), 'dimension'),
    (np.zeros((8, 8, 4), dtype=np.uint8), '3 channels'),
    (np.zeros((8, 8, 1), dtype=np.uint8), '3 channels'),
    (np.zeros((0, 8, 3), dtype=np.uint8), 'empty'),
    (np.zeros((8, 0, 3), dtype=np.uint8), 'empty'),
])
def test_bad_frames_are_refused(engine, image, message) -> None:
    prompts = engine.text_prompts(['a cat'])
    with pytest.raises(ValueError, match=message):
        engine.segment(image, prompts)


def test_bad_prompt_lists_are_refused(engine, frame) -> None:
    prompt = engine.text_prompts(['a cat'])[0]
    with pytest.raises(ValueError, match='no prompts'):
        engine.segment(frame, [])
    with pytest.raises(ValueError, match='at most 255'):
        engine.segment(frame, [prompt] * 256)
    with pytest.raises(ValueError, match='list of Prompt'):
        engine.segment(frame, prompt)
    with pytest.raises(ValueError, match='not a Prompt'):
        engine.segment(frame, [prompt, 'a dog'])
    odd = Prompt(label='odd', kind='text', embedding=torch.zeros(engine.embedding_size + 1))
    with pytest.raises(ValueError, match='same model'):
        engine.segment(frame, [prompt, odd])
    # 255 prompts is the limit, not an error.
    result = engine.segment(frame[:32, :32], [prompt] * 255, threshold=0.0)
    assert result.max_confidence.shape == (255,)
    assert result.labels.max() <= 255


@pytest.mark.parametrize('threshold', [-0.01, 1.01, float('nan'), None, '0.3'])
def test_bad_thresholds_are_refused(engine, frame, threshold) -> None:
    with pytest.raises(ValueError, match='threshold'):
        engine.segment(frame, engine.text_prompts(['a cat']), threshold=threshold)


@pytest.mark.parametrize('texts, message', [
    (['a cat', ''], 'empty'),
    (['   '], 'empty'),
    (['\t\n'], 'empty'),
    (['ok', 3], 'not a string'),
    ('a cat', 'not a string'),
])
def test_bad_text_prompts_are_refused(engine, texts, message) -> None:
    with pytest.raises(ValueError, match=message):
        engine.text_prompts(texts)


@pytest.mark.parametrize('text', [string.printable, 'caf\u00e9 \u2615 \u00fcber'])
def test_any_text_tokenizes_without_unknown_tokens(engine, text) -> None:
    prompt = engine.text_prompts([text])[0]
    assert torch.isfinite(prompt.embedding).all()
    tokenizer = engine._tokenizer
    ids = tokenizer(text)['input_ids']
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # The unknown token is the end-of-text token, so it must not occur inside the text.
    assert tokenizer.eos_token_id not in ids[1:-1]


def test_texts_longer_than_the_context_are_truncated(engine) -> None:
    long_text = ' '.join(['word'] * 200)
    prompt = engine.text_prompts([long_text])[0]
    assert prompt.embedding.shape == (engine.embedding_size,)
    assert torch.isfinite(prompt.embedding).all()
    ids = engine._tokenizer([long_text], truncation=True, max_length=77)['input_ids'][0]
    # Truncation keeps the end-of-text token the text model pools at.
    assert len(ids) == 77 and ids[-1] == engine._tokenizer.eos_token_id


def test_numpy_scalars_are_accepted_as_numbers(engine, frame) -> None:
    prompts = engine.text_prompts(['a cat'])
    result = engine.segment(frame, prompts, threshold=np.float32(0.0))
    assert np.all(result.labels == 1)
    image, mask = supports()[0]
    mixed = engine.image_prompt(image, mask, text='a cat', text_weight=np.float32(1.0))
    torch.testing.assert_close(mixed.embedding, prompts[0].embedding)


def test_resolution_can_change_live(tiny_model_dir, reference) -> None:
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu', resolution=352, dtype='float32',
                           backend='torch')
    frame = np.random.default_rng(9).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    prompts = engine.text_prompts(TEXTS)
    engine.segment(frame, prompts)  # caches the 352 px position embeddings, which must not stay
    engine.resolution = 224
    assert engine.resolution == 224
    assert tuple(engine.preprocess(frame).shape) == (1, 3, 224, 224)
    result = engine.segment(frame, prompts, return_probabilities=True)
    assert result.labels.shape == (240, 320)
    with torch.no_grad():
        logits = reference(pixel_values=engine.preprocess(frame).repeat(3, 1, 1, 1),
                           **reference_text_inputs(tiny_model_dir, TEXTS)).logits
    assert logits.shape[-2:] == (224, 224)
    expected = interpolate(torch.sigmoid(logits).unsqueeze(0), size=(240, 320),
                           mode='bilinear', align_corners=False)[0].numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize('value', [100, 48, 1040, -16, 352.0, '352', True])
def test_bad_resolution_is_refused_and_kept(tiny_model_dir, engine, value) -> None:
    with pytest.raises(ValueError, match='resolution'):
        engine.resolution = value
    assert engine.resolution == 352
    with pytest.raises(ValueError, match='resolution'):
        ClipSegEngine(str(tiny_model_dir), device='cpu', resolution=value)


def test_resolution_zero_is_the_models_own_input_size(tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / 'model_at_128'
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / 'preprocessor_config.json').read_text())
    config['size'] = {'height': 128, 'width': 128}
    (folder / 'preprocessor_config.json').write_text(json.dumps(config))
    engine = ClipSegEngine(str(folder), device='cpu')  # resolution defaults to 0
    assert engine.resolution == 128
    engine.resolution = 64
    assert engine.resolution == 64
    engine.resolution = 0
    assert engine.resolution == 128
    frame = np.zeros((30, 40, 3), dtype=np.uint8)
    assert engine.segment(frame, engine.text_prompts(['a cup'])).labels.shape == (30, 40)


def test_gpu_fast_paths_fall_back_to_eager_on_cpu(tiny_model_dir, frame, caplog) -> None:
    plain = ClipSegEngine(str(tiny_model_dir), device='cpu', backend='torch')
    with caplog.at_level(logging.WARNING, logger='clipseg_ros.core.engine'):
        engine = ClipSegEngine(str(tiny_model_dir), device='cpu', compile_mode='cuda_graphs',
                               backend='torch')
    assert engine.compile_mode == 'none'
    assert "compile_mode 'cuda_graphs' needs CUDA" in caplog.text
    np.testing.assert_array_equal(
        engine.segment(frame, engine.text_prompts(TEXTS)).labels,
        plain.segment(frame, plain.text_prompts(TEXTS)).labels)


def test_from_model_matches_the_folder_engine(tiny_model_dir, engine, frame) -> None:
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / 'preprocessor_config.json').read_text())
    built = ClipSegEngine.from_model(model, tokenizer, config, device='cpu', dtype='float32',
                                     backend='torch')
    assert built.preprocess_config == PreprocessConfig.from_dict(config)
    ours = built.segment(frame, built.text_prompts(TEXTS), return_probabilities=True)
    theirs = engine.segment(frame, engine.text_prompts(TEXTS), return_probabilities=True)
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, rtol=0, atol=1e-6)


def test_concurrent_use_from_threads_is_consistent(engine, frame) -> None:
    prompts = engine.text_prompts(TEXTS)
    expected = engine.segment(frame, prompts, return_probabilities=True).probabilities
    errors = []
    results = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(engine.segment(frame, prompts, return_probabilities=True))
        except Exception as exc:  # noqa: B902 - reported below
            errors.append(exc)

    def prompter() -> None:
        try:
            for i in range(5):
                engine.text_prompts([f'thread prompt {i}'])
                engine.image_prompt(*supports()[i % 3])
        except Exception as exc:  # noqa: B902
            errors.append(exc)

    threads = [threading.Thread(target=worker), threading.Thread(target=prompter),
               threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == 10
    for result in results:
        np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)


def test_text_cache_is_bounded_least_recently_used_first(tiny_model_dir: Path,
                                                         monkeypatch) -> None:
    from clipseg_ros.core import prompts as prompts_module
    monkeypatch.setattr(prompts_module, 'TEXT_CACHE_SIZE', 3)
    small = ClipSegEngine(model=str(tiny_model_dir), device='cpu')
    small.text_prompts(['one', 'two', 'three'])
    small.text_prompts(['one'])          # 'one' is now the most recently used
    small.text_prompts(['four'])         # evicts 'two', the least recently used
    assert list(small._text_cache) == ['three', 'one', 'four']
    calls = small.text_encoder_calls
    small.text_prompts(['one', 'three'])
    assert small.text_encoder_calls == calls, 'kept entries are still served from the cache'
    small.text_prompts(['two'])
    assert small.text_encoder_calls == calls + 1, 'an evicted entry is encoded again'
    assert len(small._text_cache) == 3


def test_release_drops_model_and_cache(tiny_model_dir, frame) -> None:
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu')
    prompts = engine.text_prompts(['a cat'])
    assert engine._text_cache
    assert engine.memory_in_use() == 0
    engine.release()
    assert engine._model is None and not engine._text_cache
    with pytest.raises(RuntimeError, match='released'):
        engine.segment(frame, prompts)
    with pytest.raises(RuntimeError, match='released'):
        engine.text_prompts(['a cat'])
    engine.release()


def test_tiny_model_is_seeded(tmp_path, tiny_model_dir) -> None:
    again = load_file(write_tiny_model(tmp_path / 'again', seed=0) / 'model.safetensors')
    original = load_file(tiny_model_dir / 'model.safetensors')
    other = load_file(write_tiny_model(tmp_path / 'other', seed=1) / 'model.safetensors')
    assert again.keys() == original.keys()
    assert all(torch.equal(again[name], original[name]) for name in original)
    assert not all(torch.equal(other[name], original[name]) for name in original)


def test_tiny_model_has_the_real_architecture(reference) -> None:
    config = reference.config
    assert config.vision_config.patch_size == 16
    assert config.vision_config.image_size == 224
    assert tuple(config.extract_layers) == (1, 2, 3)
    assert config.reduce_dim == 16
    assert config.use_complex_transposed_convolution


@pytest.mark.skipif(not HAVE_PIL, reason='CLIPSegProcessor needs PIL (or torchvision) here')
def test_tiny_model_loads_with_clipseg_processor(tiny_model_dir) -> None:
    from transformers import CLIPSegProcessor
    processor = CLIPSegProcessor.from_pretrained(tiny_model_dir)
    inputs = processor(text=['a cat'], images=[np.zeros((100, 80, 3), dtype=np.uint8)],
                       padding=True, return_tensors='pt')
    assert tuple(inputs['pixel_values'].shape) == (1, 3, 352, 352)
    assert inputs['input_ids'].shape[0] == 1

