"""The one check of an RGB image array that the engine and visual prompts accept. numpy only."""

import numpy as np


def check_rgb_image(image: np.ndarray, name: str = 'image') -> None:
    """Raise ValueError naming the problem unless ``image`` is a non-empty (H, W, 3) uint8."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'{name} must have dtype uint8 (RGB 0..255), got {image.dtype}')
    if image.ndim != 3:
        raise ValueError(f'{name} must have shape (H, W, 3), got {image.ndim} dimension(s)')
    if image.shape[2] != 3:
        raise ValueError(f'{name} must have 3 channels (RGB), got {image.shape[2]}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'{name} is empty: shape {image.shape}')
