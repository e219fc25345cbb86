"""
What the engine test modules share: the engine, transformers' reference model and a frame
(module-scoped fixtures, imported by each module), and the reference side's own preprocessing
of frames, support images and texts (never the package's).
"""

import importlib.util
import json
from pathlib import Path

from clipseg_ros.core.engine import ClipSegEngine
import numpy as np
from prompt_reference import reference_visual_prompt
import pytest
import torch
from transformers import AutoTokenizer, CLIPSegForImageSegmentation

HAVE_PIL = importlib.util.find_spec('PIL') is not None
TEXTS = ['a cat', 'a dog on the grass', 'the person']
TOLERANCE = 1e-4


def supports() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three support images of different sizes with rectangular object masks."""
    rng = np.random.default_rng(3)
    out = []
    for height, width, box in ((200, 300, (20, 120, 50, 250)), (150, 150, (0, 60, 30, 150)),
                               (120, 260, (40, 100, 10, 90))):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=bool)
        mask[box[0]:box[1], box[2]:box[3]] = True
        out.append((image, mask))
    return out


def reference_pixel_values(folder: Path, images: list[np.ndarray]) -> torch.Tensor:
    """
    Pixel values as ``CLIPSegProcessor`` makes them, for images already at the model size.

    With PIL installed the processor itself is used. Without it (transformers 5 needs PIL or
    torchvision for image processors) the same arithmetic is done here in float64 from
    preprocessor_config.json: at the model size PIL's bilinear resize is an identity, so only
    rescale and normalise remain.
    """
    if HAVE_PIL:
        from transformers import CLIPSegProcessor
        processor = CLIPSegProcessor.from_pretrained(folder)
        return processor(images=images, return_tensors='pt')['pixel_values']
    config = json.loads((folder / 'preprocessor_config.json').read_text())
    size = config['size']['height']
    mean = np.array(config['image_mean'])
    std = np.array(config['image_std'])
    batch = []
    for image in images:
        assert image.shape[:2] == (size, size), 'the fallback needs images at the model size'
        pixels = (image.astype(np.float64) * config['rescale_factor'] - mean) / std
        batch.append(pixels.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch).astype(np.float32))


def reference_prompt_pixels(folder: Path,
                            pairs: list[tuple[np.ndarray, np.ndarray | None]]) -> torch.Tensor:
    """Conditional pixel values of support images, engineered by the tests' implementation."""
    config = json.loads((folder / 'preprocessor_config.json').read_text())
    size = config['size']['height']
    return torch.stack([
        reference_visual_prompt(image, mask, size, config['image_mean'], config['image_std'],
                                config['rescale_factor'])
        for image, mask in pairs])


def reference_text_inputs(folder: Path, texts: list[str]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return dict(tokenizer(texts, padding=True, return_tensors='pt'))


@pytest.fixture(scope='module')
def engine(tiny_model_dir: Path) -> ClipSegEngine:
    # The torch path these tests check against transformers (test_backends.py: the others).
    return ClipSegEngine(model=str(tiny_model_dir), device='cpu', dtype='float32',
                         backend='torch')


@pytest.fixture(scope='module')
def reference(tiny_model_dir: Path) -> CLIPSegForImageSegmentation:
    return CLIPSegForImageSegmentation.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope='module')
def frame() -> np.ndarray:
    """Frame at the model resolution, so the processor's resize is an identity."""
    return np.random.default_rng(7).integers(0, 256, (352, 352, 3), dtype=np.uint8)
