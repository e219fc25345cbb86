"""
Visual prompt engineering for CLIPSeg support images (pure numpy + OpenCV).

Builds the prompt image the way the CLIPSeg checkpoints saw support images in training
(Lueddecke and Ecker, CVPR 2022, the "crop + 10% + blur" variant of Table 2; the reference
code's ``crop_blur_highlight352`` mode), working on the normalised image throughout:

1. the support image is resized to S x S (bilinear, aspect not kept) and rescaled and
   normalised with the processor's constants; the mask is resized to S x S nearest-neighbour;
2. background pixels are replaced by 0.1 x a 15x15, sigma 3 Gaussian blur of the normalised
   image, which pulls them towards 0, the dataset's mean colour; object pixels are kept;
3. the image is cropped to the object's box, each side moved out by 10% of the box's extent
   along its axis;
4. the crop is padded to a square with 0 (the mean colour) and resized to S x S with
   nearest-neighbour sampling.

The result is the normalised (3, S, S) float32 input of the CLIP image encoder.

Where this deliberately differs from the reference code:

* Step 1 resizes like the engine's (and transformers' processor's) query-frame preprocessing:
  half-pixel centres, antialiased when shrinking. The reference resized query and support
  images alike with ``align_corners=True`` and no antialiasing; keeping query and support alike
  is what matters, and without antialiasing a large support image (up to 4096 px and more
  here) would alias into noise.
* Nearest-neighbour resizing can drop a mask smaller than the resize step entirely; the
  reference would then darken the whole image and keep all of it. Here the mask then falls
  back to the cells of the S x S grid that contain object pixels.
* Without a mask the whole image is the object, as the reference treats an all-ones mask:
  nothing is darkened, the box is the whole frame, and the prompt is the plain S x S
  preprocessed image.
"""

import math
import numbers
from collections.abc import Sequence

from clipseg_ros.core.rgb_images import check_rgb_image
import cv2
import numpy as np

BLUR_KERNEL = 15
BLUR_SIGMA = 3.0
BACKGROUND_FACTOR = 0.1
BOX_MARGIN = 0.1


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


def _check_constants(name: str, values: Sequence[float], positive: bool = False) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{name} must be 3 numbers, got {values!r}') from exc
    if array.shape != (3,) or not np.isfinite(array).all() or (positive and array.min() <= 0):
        kind = '3 finite positive numbers' if positive else '3 finite numbers'
        raise ValueError(f'{name} must be {kind}, got {values!r}')
    return array


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """
    Return the source index of each of ``out_size`` samples of a nearest-neighbour resize.

    The rule of torch's ``interpolate(mode='nearest')``, which the reference code used:
    ``floor(i * in_size / out_size)`` with the scale and product in float32, as torch computes
    them (float64 would round a few exact products like 15.0 differently).
    """
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def _bilinear_taps(in_size: int, out_size: int,
                   antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """
    Return (out_size, K) source indices and weights of a bilinear resize along one axis.

    Half-pixel centres, edge pixels repeated. With ``antialias`` the triangle filter is widened
    by the scale when shrinking, so every source pixel contributes (as PIL and torch's
    ``antialias=True`` do). The arithmetic follows torch's two code paths in float32: in
    float64 positions differ by up to 1e-5 px, which moves sharp edges by 0.005 grey levels.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    if not antialias:
        source = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5),
                            f32(0.0))
        low = source.astype(np.int64)
        upper = (source - low.astype(f32))[:, None]
        index = np.stack([low, np.minimum(low + 1, in_size - 1)], axis=1)
        return index, np.concatenate([f32(1.0) - upper, upper], axis=1)
    support = max(scale, f32(1.0))
    centre = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    first = np.maximum((centre - support + f32(0.5)).astype(np.int64), 0)
    stop = np.minimum((centre + support + f32(0.5)).astype(np.int64), in_size)
    index = first[:, None] + np.arange(int((stop - first).max()))
    distance = (index.astype(f32) + f32(0.5) - centre[:, None]) / support
    weights = np.maximum(f32(0.0), f32(1.0) - np.abs(distance))
    weights[index >= stop[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(index, in_size - 1), weights


def _resize_axis(image: np.ndarray, out_size: int, axis: int, antialias: bool) -> np.ndarray:
    """Resize ``image`` along ``axis`` (0 or 1) bilinearly; float32 result."""
    index, weights = _bilinear_taps(image.shape[axis], out_size, antialias)
    shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
    out = None
    # One gather per filter tap keeps memory at a few output-sized buffers, whatever the
    # input size, where a dense (out x in) weight matrix would cost O(in * out) work.
    for tap in range(index.shape[1]):
        term = np.take(image, index[:, tap], axis=axis) * weights[:, tap].reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    return out


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """
    Resize an (H, W, C) uint8 image to (size, size, C) float32, aspect not kept.

    The engine's query-frame resize: bilinear with half-pixel centres, antialiased (both axes)
    when either side shrinks.
    """
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image.astype(np.float32)
    antialias = height > size or width > size
    # The axis resized first sets the intermediate buffer: (size, W) or (H, size).
    if width <= height:
        return _resize_axis(_resize_axis(image, size, 0, antialias), size, 1, antialias)
    return _resize_axis(_resize_axis(image, size, 1, antialias), size, 0, antialias)


def resize_mask(selected: np.ndarray, size: int) -> np.ndarray:
    """
    Resize an (H, W) bool mask to (size, size) nearest-neighbour (see :func:`nearest_indices`).

    If that drops every object pixel (an object smaller than the resize step), a cell is
    object instead when any pixel of its source span, from its sample up to the next cell's,
    is.
    """
    rows = nearest_indices(selected.shape[0], size)
    cols = nearest_indices(selected.shape[1], size)
    grid = selected[np.ix_(rows, cols)]
    if grid.any():
        return grid
    # reduceat over [rows[i], rows[i + 1]): each cell's span of the source axis.
    return np.logical_or.reduceat(np.logical_or.reduceat(selected, rows, axis=0), cols, axis=1)


def widened_box(mask: np.ndarray, margin: float = BOX_MARGIN) -> tuple[int, int, int, int]:
    """
    Return the box of the nonzero pixels of a 2-D mask, widened by ``margin`` per side.

    Each side moves out by ``margin`` times the box's extent along its axis, then the bound is
    clipped to the mask and rounded down, as the reference code does (so the low side can move
    one pixel more than the high side). The result ``(x0, y0, x1, y1)`` is half-open: columns
    ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError('mask must be a 2-D numpy array')
    if not math.isfinite(margin) or margin < 0.0:
        raise ValueError(f'margin must be a finite number >= 0, got {margin}')
    selected = _check_mask(mask, mask.shape)
    height, width = selected.shape
    box = []
    for extent, occupied in ((width, selected.any(axis=0)), (height, selected.any(axis=1))):
        found = np.flatnonzero(occupied)
        low, high = int(found[0]), int(found[-1]) + 1
        grow = margin * (high - low)
        box.append((math.floor(max(0.0, low - grow)), math.floor(min(extent, high + grow))))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad ``image`` (H, W, ...) with zeros to side max(H, W); an odd extra goes right/below."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    top = (side - height) // 2
    left = (side - width) // 2
    out[top:top + height, left:left + width] = image
    return out


def engineer_visual_prompt(
    support_rgb: np.ndarray, mask: np.ndarray | None, size: int, *,
    mean: Sequence[float], std: Sequence[float], rescale_factor: float,
) -> np.ndarray:
    """
    Turn a support image and object mask into CLIPSeg's normalised prompt image.

    Parameters
    ----------
    support_rgb
        (H, W, 3) uint8 RGB image.
    mask
        (H, W) bool or integer array, nonzero = object; ``None`` uses the whole image with
        nothing darkened.
    size
        Side S of the square output in pixels (the model's input resolution).
    mean, std, rescale_factor
        The processor's constants: pixels become ``(value * rescale_factor - mean) / std``.

    Returns
    -------
    np.ndarray
        (3, S, S) float32, channels first: ``pixel_values[0]`` for the CLIP image encoder.

    """
    check_rgb_image(support_rgb, 'support image')
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f'size must be a positive integer, got {size!r}')
    size = int(size)
    mean_array = _check_constants('mean', mean)
    std_array = _check_constants('std', std, positive=True)
    if (isinstance(rescale_factor, bool) or not isinstance(rescale_factor, numbers.Real)
            or not math.isfinite(rescale_factor) or rescale_factor <= 0):
        raise ValueError(f'rescale_factor must be a positive number, got {rescale_factor!r}')
    selected = None if mask is None else _check_mask(mask, support_rgb.shape[:2])

    resized = resize_bilinear(support_rgb, size)
    gain = (rescale_factor / std_array).astype(np.float32)
    offset = (mean_array / std_array).astype(np.float32)
    image = resized * gain - offset
    if selected is not None:
        grid = resize_mask(selected, size)
        blurred = cv2.GaussianBlur(image, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA,
                                   sigmaY=BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)
        image = np.where(grid[:, :, None], image, np.float32(BACKGROUND_FACTOR) * blurred)
        x0, y0, x1, y1 = widened_box(grid)
        square = pad_to_square(image[y0:y1, x0:x1])
        if square.shape[0] != size:
            index = nearest_indices(square.shape[0], size)
            image = square[np.ix_(index, index)]
        else:
            image = square
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
