"""
Visual prompt engineering for CLIPSeg support images (pure numpy + OpenCV).

Implements the variant that worked best in the CLIPSeg paper (Lueddecke and Ecker, CVPR 2022,
Table 2, "crop + 10% + blur"): the background is blurred and darkened, the image is cropped to
the object's box widened by 10% on each side, padded to a square and resized to the model's
input resolution.
"""

import math
from typing import Optional

import cv2
import numpy as np

BLUR_KERNEL = 15
BLUR_SIGMA = 3.0
BACKGROUND_FACTOR = 0.1
BOX_MARGIN = 0.1


def _check_image(image: np.ndarray, name: str = 'support image') -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'{name} must have dtype uint8, got {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'{name} must have shape (H, W, 3), got {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'{name} is empty: shape {image.shape}')


def _check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate a mask against an image of ``shape`` (H, W); return it as a bool array."""
    if not isinstance(mask, np.ndarray):
        raise ValueError(f'mask must be a numpy array, got {type(mask).__name__}')
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f'mask must have a bool or integer dtype, got {mask.dtype}')
    if mask.shape != tuple(shape):
        raise ValueError(
            f'mask shape {mask.shape} does not match the image size (H, W) = {tuple(shape)}')
    selected = mask != 0
    if not selected.any():
        raise ValueError('mask selects no pixel: mark the object with nonzero values')
    return selected


def widened_box(mask: np.ndarray, margin: float = BOX_MARGIN) -> tuple[int, int, int, int]:
    """
    Return the bounding box of the nonzero pixels of ``mask``, widened by ``margin``.

    Each side moves out by ``margin`` times the box's extent along that axis (rounded to the
    nearest pixel), then the box is clipped to the mask. The result ``(x0, y0, x1, y1)`` is
    half-open: columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError('mask must be a 2-D numpy array')
    if not math.isfinite(margin) or margin < 0.0:
        raise ValueError(f'margin must be a finite number >= 0, got {margin}')
    selected = _check_mask(mask, mask.shape)
    rows = np.flatnonzero(selected.any(axis=1))
    cols = np.flatnonzero(selected.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    dy = int(math.floor(margin * (y1 - y0) + 0.5))
    dx = int(math.floor(margin * (x1 - x0) + 0.5))
    height, width = mask.shape
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def darken_background(image: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """
    Return ``image`` with pixels outside ``selected`` replaced by 0.1 x its blurred copy.

    The blur (15x15 Gaussian, sigma 3) runs over the whole image, so the background keeps a
    faint, smoothed context while the object stays sharp and bright.
    """
    blurred = cv2.GaussianBlur(
        image.astype(np.float32), (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA, sigmaY=BLUR_SIGMA)
    dark = np.clip(np.rint(BACKGROUND_FACTOR * blurred), 0, 255).astype(np.uint8)
    return np.where(selected[:, :, None], image, dark)


# Crops longer than this many output sides are shrunk before they are padded to a square.
MAX_PAD_SIDE_FACTOR = 4


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Center ``image`` (H, W, C) on a zero square of side max(H, W)."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    top = (side - height) // 2
    left = (side - width) // 2
    out[top:top + height, left:left + width] = image
    return out


def engineer_visual_prompt(
    support_rgb: np.ndarray, mask: Optional[np.ndarray], out_size: int
) -> np.ndarray:
    """
    Turn a support image and object mask into CLIPSeg's prompt image.

    Parameters
    ----------
    support_rgb
        (H, W, 3) uint8 RGB image.
    mask
        (H, W) bool or integer array, nonzero = object; ``None`` uses the whole image with
        nothing darkened.
    out_size
        Side of the square output in pixels (the model's input resolution).

    Returns
    -------
    np.ndarray
        (out_size, out_size, 3) uint8 RGB image.

    """
    _check_image(support_rgb)
    if isinstance(out_size, bool) or not isinstance(out_size, (int, np.integer)) or out_size < 1:
        raise ValueError(f'out_size must be a positive integer, got {out_size!r}')
    out_size = int(out_size)
    if mask is None:
        # The whole image is the object: no darkening, and the widened box is the full frame.
        cropped = support_rgb
    else:
        selected = _check_mask(mask, support_rgb.shape[:2])
        x0, y0, x1, y1 = widened_box(selected)
        cropped = darken_background(support_rgb, selected)[y0:y1, x0:x1]
    height, width = cropped.shape[:2]
    if max(height, width) > MAX_PAD_SIDE_FACTOR * out_size:
        # A very long, thin crop would make a huge square only to shrink it again: shrink
        # first (aspect kept) so padding allocates at most a few output sizes.
        scale = MAX_PAD_SIDE_FACTOR * out_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        cropped = cv2.resize(cropped, size, interpolation=cv2.INTER_AREA)
    square = pad_to_square(cropped)
    side = square.shape[0]
    if side == out_size:
        return np.ascontiguousarray(square)
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    interpolation = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
    return cv2.resize(square, (out_size, out_size), interpolation=interpolation)
