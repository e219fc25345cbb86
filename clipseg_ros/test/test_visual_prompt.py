"""
Tests of the visual prompt engineering (crop + 10% + blur, as the checkpoint was trained).

The main check compares :func:`engineer_visual_prompt` with ``prompt_reference``, a separate
torch implementation written from the recipe's description. Both work in float32 on values of
order 1 (normalised pixels lie in about [-2.1, 2.7]); they differ by float rounding only: the
blur (OpenCV against a float64 conv2d, < 2e-6) and the bilinear sample positions (numpy against
torch's float32 arithmetic; up to 5.3e-5 observed, where the support image is enlarged). The
tolerance is 1e-4. The nearest-neighbour and crop steps pick whole pixels, so any disagreement
there would show as an error of order 1, far above it.
"""

import tracemalloc

from clipseg_ros.core.visual_prompt import (
    engineer_visual_prompt, nearest_indices, pad_to_square, resize_mask, widened_box)
import numpy as np
from prompt_reference import reference_visual_prompt
import pytest
import torch
from torch.nn import functional

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESCALE = 1.0 / 255.0
CONSTANTS = {'mean': MEAN, 'std': STD, 'rescale_factor': RESCALE}
TOLERANCE = 1e-4


def engineer(image: np.ndarray, mask: np.ndarray | None, size: int) -> np.ndarray:
    return engineer_visual_prompt(image, mask, size, **CONSTANTS)


def reference(image: np.ndarray, mask: np.ndarray | None, size: int) -> np.ndarray:
    return reference_visual_prompt(image, mask, size, MEAN, STD, RESCALE).numpy()


def normalised(rgb: tuple[int, int, int]) -> np.ndarray:
    """A colour's normalised value per channel, in float64."""
    return (np.array(rgb) * RESCALE - np.array(MEAN)) / np.array(STD)


def rect_mask(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def ellipse_mask(shape: tuple[int, int], centre: tuple[float, float],
                 radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0


def noise(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


# ---------------------------------------------------------------------- against the reference


# Non-square support images, shrunk, enlarged and both at once, with off-centre masks.
CASES = {
    'wide, ellipse upper right, shrunk': (
        noise((300, 500), 1), ellipse_mask((300, 500), (80, 360), (50, 90)), 352),
    'tall, box lower left, shrunk': (
        noise((480, 200), 2), rect_mask((480, 200), (300, 420), (20, 90)), 352),
    'small, enlarged': (
        noise((90, 150), 3), ellipse_mask((90, 150), (30, 100), (12, 25)), 352),
    'one side shrunk, one enlarged': (
        noise((120, 400), 4), rect_mask((120, 400), (70, 110), (250, 330)), 352),
    'low resolution': (
        noise((120, 260), 5), rect_mask((120, 260), (40, 100), (10, 90)), 96),
    'two parts': (
        noise((240, 320), 6),
        rect_mask((240, 320), (10, 40), (20, 60)) | rect_mask((240, 320), (150, 200), (90, 130)),
        224),
}


@pytest.mark.parametrize('name', list(CASES))
def test_prompt_matches_the_independent_reference(name) -> None:
    image, mask, size = CASES[name]
    out = engineer(image, mask, size)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    assert out.flags['C_CONTIGUOUS']
    np.testing.assert_allclose(out, reference(image, mask, size), rtol=0, atol=TOLERANCE)


def test_mask_touching_the_border() -> None:
    # Object in the top right corner: the widened box is clipped at two sides, not at the other
    # two, so the crop (and its padding) is lopsided.
    image = noise((200, 300), 7)
    mask = rect_mask((200, 300), (0, 50), (250, 300))
    out = engineer(image, mask, 352)
    np.testing.assert_allclose(out, reference(image, mask, 352), rtol=0, atol=TOLERANCE)


def test_tiny_mask_dropped_by_nearest_resizing_falls_back_to_its_cell() -> None:
    image = noise((1000, 800), 8)
    mask = np.zeros((1000, 800), dtype=bool)
    mask[501, 3] = True
    # Premise, checked with torch: nearest resizing to 96 px misses the single object pixel.
    resized = functional.interpolate(torch.from_numpy(mask)[None, None].float(),
                                     size=(96, 96), mode='nearest')
    assert not resized.any()
    out = engineer(image, mask, 96)
    np.testing.assert_allclose(out, reference(image, mask, 96), rtol=0, atol=TOLERANCE)
    grid = resize_mask(mask, 96)
    assert grid.sum() == 1 and grid[48, 0]  # 501 / (1000 / 96) = 48.1, 3 / (800 / 96) = 0.4


def test_tiny_mask_that_survives_resizing() -> None:
    image = noise((60, 80), 9)
    mask = rect_mask((60, 80), (30, 32), (70, 72))  # 2x2 pixels, enlarged to about 12x9
    out = engineer(image, mask, 224)
    np.testing.assert_allclose(out, reference(image, mask, 224), rtol=0, atol=TOLERANCE)
    # The object fills the middle of the prompt, after its margin and square padding.
    assert not np.array_equal(out[:, 112, 112], np.zeros(3, np.float32))


def test_no_mask_is_the_plainly_preprocessed_whole_image() -> None:
    image = noise((100, 200), 10)
    out = engineer(image, None, 352)
    # Stretched to the square as query frames are: no padding, nothing darkened.
    expected = functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(352, 352),
        mode='bilinear', align_corners=False)[0]
    expected = (expected * RESCALE - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD).view(3, 1, 1)
    np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(out, reference(image, None, 352), rtol=0, atol=TOLERANCE)
    # The reference code's treatment of an all-ones mask gives the same image.
    np.testing.assert_array_equal(out, engineer(image, np.ones((100, 200), np.uint8), 352))


# ---------------------------------------------------------------------- the recipe's steps


def test_object_pixels_are_kept_and_background_pulled_to_the_mean() -> None:
    # At the model size the first resize is the identity. The object spans the image, so its
    # widened box is the whole frame and the last resize is the identity too.
    rng = np.random.default_rng(11)
    image = np.full((120, 120, 3), 200, dtype=np.uint8)
    image[10:110, 2:118] = rng.integers(0, 256, (100, 116, 3), dtype=np.uint8)
    mask = rect_mask((120, 120), (10, 110), (2, 118))
    assert widened_box(mask) == (0, 0, 120, 120)
    out = engineer(image, mask, 120)
    expected_object = (image[10:110, 2:118] * RESCALE - MEAN) / STD
    np.testing.assert_allclose(out[:, 10:110, 2:118], expected_object.transpose(2, 0, 1),
                               rtol=0, atol=1e-5)
    # Background more than the blur radius (7 px) from the object: 0.1 x the flat grey,
    # normalised: pulled towards 0, the mean colour, not towards black.
    flat = 0.1 * normalised((200, 200, 200))
    np.testing.assert_allclose(out[:, :3], np.broadcast_to(flat[:, None, None], (3, 3, 120)),
                               rtol=0, atol=1e-5)
    black = normalised((0, 0, 0))
    assert np.all(np.abs(out[:, :3]) < np.abs(black)[:, None, None] / 10)


def test_crop_is_padded_with_the_mean_colour_to_a_centred_square() -> None:
    image = np.full((192, 192, 3), 90, dtype=np.uint8)
    mask = rect_mask((192, 192), (60, 140), (16, 176))  # 80 rows x 160 columns
    # Widened box: rows 52..147 (96), columns 0..191 (192) -> a 192x192 square with 48 zero
    # rows above and below; at the model size both resizes are the identity.
    assert widened_box(mask) == (0, 52, 192, 148)
    out = engineer(image, mask, 192)
    assert not out[:, :48].any() and not out[:, 144:].any()
    # The object (rows 60..139, columns 16..175 of the image) lands 48 + 8 rows down.
    np.testing.assert_allclose(
        out[:, 56:136, 16:176],
        np.broadcast_to(normalised((90, 90, 90))[:, None, None], (3, 80, 160)),
        rtol=0, atol=1e-5)
    # Flat grey around it: the background is 0.1 x that grey, normalised.
    np.testing.assert_allclose(
        out[:, 48:52], np.broadcast_to(0.1 * normalised((90, 90, 90))[:, None, None],
                                       (3, 4, 192)), rtol=0, atol=1e-5)
    tall = pad_to_square(np.ones((30, 10, 3), dtype=np.uint8))
    assert tall.shape == (30, 30, 3)
    assert tall[:, 10:20].all() and not tall[:, :10].any() and not tall[:, 20:].any()
    odd = pad_to_square(np.ones((3, 6), dtype=np.uint8))
    assert odd[1:4].all() and not odd[0].any() and not odd[4:].any()  # extra row below


def test_widened_box_adds_ten_percent_per_side() -> None:
    # Object: rows 20..59 (40 high), columns 50..129 (80 wide) -> 4 and 8 pixels of margin.
    mask = rect_mask((100, 200), (20, 60), (50, 130))
    assert widened_box(mask) == (42, 16, 138, 64)
    assert widened_box(mask, margin=0.0) == (50, 20, 130, 60)
    assert widened_box(mask, margin=0.5) == (10, 0, 170, 80)


def test_widened_box_rounds_down_as_the_reference_code() -> None:
    # 25 columns: 2.5 px of margin -> 47.5 and 77.5, both rounded down.
    mask = rect_mask((100, 200), (20, 53), (50, 75))
    x0, y0, x1, y1 = widened_box(mask)
    assert (x0, x1) == (47, 77)
    # 33 rows (20..52): 3.3 px of margin -> 16.7 and 56.3, so the top moves 4 px, the
    # bottom 3.
    assert (y0, y1) == (16, 56)


def test_widened_box_is_clipped_to_the_image() -> None:
    mask = rect_mask((50, 60), (0, 30), (40, 60))
    assert widened_box(mask) == (38, 0, 60, 33)


def test_widened_box_spans_all_parts_of_the_mask() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10, 20] = True
    mask[49, 69] = True
    # Extent 40 rows x 50 columns -> margins 4 and 5.
    assert widened_box(mask) == (15, 6, 75, 54)


def test_nearest_indices_follow_torch() -> None:
    for in_size in (1, 7, 100, 120, 351, 353, 1000):
        for out_size in (64, 96, 352):
            ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, -1)
            expected = functional.interpolate(ramp, size=out_size, mode='nearest')[0, 0]
            np.testing.assert_array_equal(nearest_indices(in_size, out_size),
                                          expected.long().numpy())


def test_bool_and_integer_masks_are_equivalent() -> None:
    image, mask, _ = CASES['tall, box lower left, shrunk']
    as_bool = engineer(image, mask.astype(bool), 64)
    np.testing.assert_array_equal(as_bool, engineer(image, (mask * 255).astype(np.uint8), 64))
    np.testing.assert_array_equal(as_bool, engineer(image, mask.astype(np.int64), 64))


def test_preprocessing_constants_are_used() -> None:
    image = np.full((40, 40, 3), 255, dtype=np.uint8)
    out = engineer_visual_prompt(image, None, 64, mean=(0.5, 0.0, 1.0), std=(0.5, 2.0, 1.0),
                                 rescale_factor=1.0 / 255.0)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.5, 0.0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- memory


def test_long_thin_support_image_is_stretched_to_the_square() -> None:
    thin = np.full((2, 16000, 3), 200, np.uint8)  # padding before resizing: 16000 x 16000
    out = engineer(thin, None, 352)
    assert out.shape == (3, 352, 352) and out.dtype == np.float32
    expected = normalised((200, 200, 200)).astype(np.float32)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape),
                               rtol=0, atol=1e-5)


def test_memory_stays_bounded_for_large_images_and_thin_masks() -> None:
    # 2048 x 2048 support image (12 MB) with a one-pixel-wide mask line across it: everything
    # after the first resize lives on the 352 x 352 grid.
    image = np.zeros((2048, 2048, 3), dtype=np.uint8)
    mask = np.zeros((2048, 2048), dtype=bool)
    mask[1000, 5:2040] = True
    tracemalloc.start()
    try:
        out = engineer(image, mask, 352)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (3, 352, 352)
    # The mask's bool copy (4 MB) and a few (352 x 2048 x 3) float32 buffers (8.7 MB each);
    # a float copy of the whole image alone would be 50 MB.
    assert peak < 40 * 2 ** 20, f'peak {peak / 2 ** 20:.1f} MiB'


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize('bad_mask, message', [
    (np.zeros((200, 200), dtype=np.uint8), 'selects no pixel'),
    (np.ones((100, 200), dtype=np.uint8), 'does not match'),
    (np.ones((200, 200, 1), dtype=np.uint8), 'does not match'),
    (np.ones((200, 200), dtype=np.float32), 'bool or integer'),
    ([[1]], 'numpy array'),
])
def test_bad_masks_are_refused(bad_mask, message) -> None:
    with pytest.raises(ValueError, match=message):
        engineer(noise((200, 200), 12), bad_mask, 64)


@pytest.mark.parametrize('bad_image, message', [
    (np.zeros((20, 20, 3), dtype=np.float32), 'uint8'),
    (np.zeros((20, 20), dtype=np.uint8), r'\(H, W, 3\)'),
    (np.zeros((20, 20, 4), dtype=np.uint8), '3 channels'),
    (np.zeros((0, 20, 3), dtype=np.uint8), 'empty'),
])
def test_bad_support_images_are_refused(bad_image, message) -> None:
    with pytest.raises(ValueError, match=message):
        engineer(bad_image, None, 64)


def test_bad_size_constants_and_margin_are_refused() -> None:
    image, mask = noise((50, 50), 13), rect_mask((50, 50), (10, 20), (10, 20))
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match='size'):
            engineer(image, mask, bad)
    for key, bad in (('mean', (0.5, 0.5)), ('mean', (0.5, float('nan'), 0.5)),
                     ('std', (1.0, 0.0, 1.0)), ('std', 'abc'),
                     ('rescale_factor', 0.0), ('rescale_factor', True)):
        with pytest.raises(ValueError, match=key):
            engineer_visual_prompt(image, mask, 64, **{**CONSTANTS, key: bad})
    with pytest.raises(ValueError, match='margin'):
        widened_box(mask, margin=-0.1)
