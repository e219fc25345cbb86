"""
Model folders as transformers itself writes them, and the transformers version check.

The folders here are written by the installed transformers' own ``save_pretrained`` calls
(model, processor, image processor, tokenizer), not by the project's tiny-model writer, so a
change in what transformers writes shows up here first.
"""

import json
from pathlib import Path

from clipseg_ros.engine import (
    check_transformers_version, ClipSegEngine, MIN_TRANSFORMERS_VERSION, ModelLoadError,
    PreprocessConfig)
from clipseg_ros.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import numpy as np
import pytest
import torch
import transformers
from transformers import CLIPSegProcessor

# The image processor's own settings (the keys that name classes are not constructor
# arguments).
IMAGE_PROCESSOR_SETTINGS = {key: value for key, value in PREPROCESSOR_CONFIG.items()
                            if key not in ('image_processor_type', 'processor_class')}
# Constants that differ from the ImageNet ones, so a test can tell which file was read.
CUSTOM_MEAN = [0.25, 0.5, 0.75]
CUSTOM_STD = [0.2, 0.3, 0.4]


def image_processor(**overrides):
    """transformers' CLIPSeg image processor class (a PIL fallback where torchvision is missing)."""
    from transformers import ViTImageProcessor
    return ViTImageProcessor(**{**IMAGE_PROCESSOR_SETTINGS, **overrides})


def write_with_processor(folder: Path, **overrides) -> Path:
    """What a user gets from CLIPSegProcessor + CLIPSegForImageSegmentation .save_pretrained."""
    model, tokenizer = build_random_model('tiny', seed=5)
    processor = CLIPSegProcessor(image_processor=image_processor(**overrides),
                                 tokenizer=tokenizer)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def write_with_separate_parts(folder: Path, **overrides) -> Path:
    """The hub checkpoint's layout: image processor and tokenizer saved on their own."""
    model, tokenizer = build_random_model('tiny', seed=5)
    image_processor(**overrides).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def test_processor_save_pretrained_writes_the_transformers_5_layout(tmp_path) -> None:
    folder = write_with_processor(tmp_path / 'model')
    assert (folder / 'processor_config.json').is_file()
    assert not (folder / 'preprocessor_config.json').exists()


@pytest.mark.parametrize('writer', [write_with_processor, write_with_separate_parts])
def test_folders_written_by_transformers_configure_and_segment(tmp_path, writer) -> None:
    folder = writer(tmp_path / 'model', image_mean=CUSTOM_MEAN, image_std=CUSTOM_STD)
    engine = ClipSegEngine(str(folder), device='cpu', resolution=64)
    assert engine.preprocess_config == PreprocessConfig(
        size=352, mean=tuple(CUSTOM_MEAN), std=tuple(CUSTOM_STD), rescale_factor=1 / 255)
    frame = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    result = engine.segment(frame, engine.text_prompts(['a cup', 'a dog']), threshold=0.0)
    assert result.labels.shape == (48, 80)
    assert set(np.unique(result.labels)) <= {1, 2}


def test_engine_preprocessing_follows_the_processor_file(tmp_path) -> None:
    """The constants read from processor_config.json are the ones the processor applies."""
    folder = write_with_processor(tmp_path / 'model', image_mean=CUSTOM_MEAN,
                                  image_std=CUSTOM_STD)
    engine = ClipSegEngine(str(folder), device='cpu', resolution=352)
    frame = np.random.default_rng(1).integers(0, 256, (352, 352, 3), dtype=np.uint8)
    processor = CLIPSegProcessor.from_pretrained(folder)
    expected = processor(images=[frame], return_tensors='pt')['pixel_values']
    torch.testing.assert_close(engine.preprocess(frame), expected, atol=1e-5, rtol=0)


def test_processor_file_without_image_processor_is_explained(tmp_path) -> None:
    folder = write_with_processor(tmp_path / 'model')
    (folder / 'processor_config.json').write_text('[1, 2]')
    with pytest.raises(ModelLoadError, match='processor_config.json'):
        ClipSegEngine(str(folder), device='cpu')


def test_folder_without_any_processor_file_names_both(tmp_path) -> None:
    folder = write_with_processor(tmp_path / 'model')
    (folder / 'processor_config.json').unlink()
    with pytest.raises(ModelLoadError) as error:
        ClipSegEngine(str(folder), device='cpu')
    assert 'preprocessor_config.json' in str(error.value)
    assert 'processor_config.json' in str(error.value)


def test_preprocessor_config_wins_when_both_are_there(tmp_path) -> None:
    folder = write_with_processor(tmp_path / 'model', image_mean=CUSTOM_MEAN)
    (folder / 'preprocessor_config.json').write_text(json.dumps(PREPROCESSOR_CONFIG))
    engine = ClipSegEngine(str(folder), device='cpu', resolution=64)
    assert engine.preprocess_config.mean == tuple(PREPROCESSOR_CONFIG['image_mean'])


def test_installed_transformers_passes_the_version_check() -> None:
    assert check_transformers_version() == transformers.__version__


@pytest.mark.parametrize('installed', ['4.46.3', '4.57.6', '3.5.1'])
def test_older_transformers_is_refused_naming_both_versions(installed) -> None:
    with pytest.raises(ModelLoadError) as error:
        check_transformers_version(installed)
    assert installed in str(error.value)
    assert f'>= {MIN_TRANSFORMERS_VERSION}' in str(error.value)


def test_configure_refuses_old_transformers(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(transformers, '__version__', '4.46.3')
    with pytest.raises(ModelLoadError, match='transformers 4.46.3 is installed'):
        ClipSegEngine(str(tiny_model_dir), device='cpu')


def test_declared_floor_is_the_same_everywhere() -> None:
    """requirements, package.xml and README claim the floor the engine checks."""
    root = Path(__file__).resolve().parents[2]
    package_xml = (root / 'clipseg_ros' / 'package.xml').read_text()
    assert f'version_gte="{MIN_TRANSFORMERS_VERSION}">python3-transformers-pip<' in package_xml
    readme = (root / 'README.md').read_text()
    assert f'transformers>={MIN_TRANSFORMERS_VERSION}' in readme
    assert 'transformers>=4' not in readme
