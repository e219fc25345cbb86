"""
Loading models: folders as transformers itself writes them, unsafe or broken folders refused
with the reason, hub ids, and the transformers version check.

The folders here are written by the installed transformers' own ``save_pretrained`` calls
(model, processor, image processor, tokenizer), not by the project's tiny-model writer, so a
change in what transformers writes shows up here first.
"""

import json
from pathlib import Path

import os
import pickle
import shutil

from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.model_loading import (
    check_transformers_version, DEFAULT_MODEL, MIN_TRANSFORMERS_VERSION, ModelLoadError,
    PreprocessConfig)
from clipseg_ros.tools.tiny_model import build_random_model, PREPROCESSOR_CONFIG
import numpy as np
import pytest
from safetensors.torch import load_file
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
    """transformers' CLIPSeg image processor (a PIL fallback where torchvision is missing)."""
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


def test_loads_from_a_local_folder(tiny_model_dir) -> None:
    engine = ClipSegEngine(str(tiny_model_dir), device='cpu', dtype='float32')
    assert engine.model_name == str(tiny_model_dir)
    assert engine.device == torch.device('cpu')
    assert engine.dtype == torch.float32
    assert engine.resolution == 352
    assert engine.compile_mode == 'none'
    assert DEFAULT_MODEL == 'CIDAS/clipseg-rd64-refined'


def test_pickle_only_folder_is_refused_without_unpickling(tiny_model_dir, tmp_path,
                                                          monkeypatch) -> None:
    folder = tmp_path / 'pickled'
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / 'model.safetensors')
    (folder / 'model.safetensors').unlink()
    torch.save(state, folder / 'pytorch_model.bin')
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError('unpickling was attempted')

    monkeypatch.setattr(torch, 'load', refuse)
    monkeypatch.setattr(pickle, 'load', refuse)
    monkeypatch.setattr(pickle, 'loads', refuse)
    with pytest.raises(ModelLoadError) as info:
        ClipSegEngine(str(folder), device='cpu')
    assert calls == []
    message = str(info.value)
    assert 'pytorch_model.bin' in message and 'safetensors' in message
    assert str(folder) in message


def test_missing_folder_is_explained(tmp_path) -> None:
    missing = tmp_path / 'no_such_model'
    with pytest.raises(ModelLoadError) as info:
        ClipSegEngine(str(missing), device='cpu')
    message = str(info.value)
    assert str(missing) in message and 'does not exist' in message
    assert 'huggingface-cli download CIDAS/clipseg-rd64-refined --local-dir' in message


def test_unavailable_hub_id_is_explained(monkeypatch) -> None:
    import huggingface_hub.constants
    # Offline mode makes the hub client fail at once instead of retrying a network.
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(ModelLoadError) as info:
        ClipSegEngine('clipseg-ros-tests/no-such-model', device='cpu')
    message = str(info.value)
    assert "'clipseg-ros-tests/no-such-model'" in message
    assert 'huggingface-cli download clipseg-ros-tests/no-such-model --local-dir' in message
    assert 'pass the folder path' in message


def test_corrupt_safetensors_is_explained(tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / 'corrupt'
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError) as info:
        ClipSegEngine(str(folder), device='cpu')
    message = str(info.value)
    assert str(weights) in message and 'corrupt' in message
    assert 'SafetensorError' in message


def test_folder_without_config_is_explained(tmp_path) -> None:
    (tmp_path / 'model.safetensors').write_bytes(b'')
    with pytest.raises(ModelLoadError, match='config.json'):
        ClipSegEngine(str(tmp_path), device='cpu')


def test_folder_without_preprocessor_config_is_explained(tiny_model_dir, tmp_path) -> None:
    folder = tmp_path / 'no_preprocessor'
    shutil.copytree(tiny_model_dir, folder)
    (folder / 'preprocessor_config.json').unlink()
    with pytest.raises(ModelLoadError, match='preprocessor_config.json'):
        ClipSegEngine(str(folder), device='cpu')


def test_package_url_names_a_folder_a_package_installs(tiny_model_dir, tmp_path,
                                                       monkeypatch) -> None:
    """package://<package>/<path> is the ROS way to name a file a package installs."""
    prefix = tmp_path / 'prefix'
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'model_pkg'
    marker.parent.mkdir(parents=True)
    marker.write_text('')
    shutil.copytree(tiny_model_dir, prefix / 'share' / 'model_pkg' / 'models' / 'tiny')
    monkeypatch.setenv('AMENT_PREFIX_PATH', f"{prefix}:{os.environ.get('AMENT_PREFIX_PATH', '')}")
    engine = ClipSegEngine('package://model_pkg/models/tiny', device='cpu', resolution=64)
    assert engine.segment(np.zeros((20, 30, 3), np.uint8),
                          engine.text_prompts(['a cup'])).labels.shape == (20, 30)
    with pytest.raises(ModelLoadError, match="package 'no_such_pkg' is not installed"):
        ClipSegEngine('package://no_such_pkg/models/tiny', device='cpu')
    with pytest.raises(ModelLoadError, match='does not exist'):
        ClipSegEngine('package://model_pkg/models/missing', device='cpu')
    with pytest.raises(ModelLoadError, match='must name a package and a path'):
        ClipSegEngine('package://model_pkg', device='cpu')


def test_the_node_configures_and_segments_with_a_processor_written_folder(ros_context, tmp_path):
    from node_harness import encode_frame, rgb_frame, RunningNode
    folder = write_with_processor(tmp_path / 'model')
    harness = RunningNode(ros_context, folder)
    try:
        assert harness.node._engine.model_name == str(folder)
        outputs = harness.send_and_wait(encode_frame(rgb_frame(64, 48), 'rgb8'))
        assert (outputs['mask'].width, outputs['mask'].height) == (64, 48)
        assert list(outputs['segmentation'].labels) == ['a red square', 'sky']
    finally:
        harness.close()
