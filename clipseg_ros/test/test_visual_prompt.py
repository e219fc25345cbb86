"""Tests of the visual prompt engineering (crop + 10% + blur) on synthetic images."""

from clipseg_ros.visual_prompt import engineer_visual_prompt, pad_to_square, widened_box
import cv2
import numpy as np
import pytest


def rect_mask(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def test_widened_box_adds_ten_percent_per_side() -> None:
    # Object: rows 20..59 (40 high), columns 50..129 (80 wide) -> 4 and 8 pixels of margin.
    mask = rect_mask((100, 200), (20, 60), (50, 130))
    assert widened_box(mask) == (42, 16, 138, 64)
    assert widened_box(mask, margin=0.0) == (50, 20, 130, 60)
    assert widened_box(mask, margin=0.5) == (10, 0, 170, 80)


def test_widened_box_is_clipped_to_the_image() -> None:
    mask = rect_mask((50, 60), (0, 30), (40, 60))
    x0, y0, x1, y1 = widened_box(mask)
    assert (x0, y0, x1, y1) == (38, 0, 60, 33)


def test_widened_box_spans_all_parts_of_the_mask() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10, 20] = True
    mask[49, 69] = True
    # Extent 40 rows x 50 columns -> margins 4 and 5.
    assert widened_box(mask) == (15, 6, 75, 54)


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """200x200 image: flat grey background (200), random texture on a 100x100 object."""
    rng = np.random.default_rng(1)
    image = np.full((200, 200, 3), 200, dtype=np.uint8)
    image[20:120, 40:140] = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    return image, rect_mask((200, 200), (20, 120), (40, 140))


def test_object_pixels_are_kept_and_background_darkened(scene) -> None:
    image, mask = scene
    # Widened box: rows 10..129, columns 30..149 -> a 120x120 crop, so out_size 120 is 1:1.
    assert widened_box(mask) == (30, 10, 150, 130)
    out = engineer_visual_prompt(image, mask, 120)
    assert out.shape == (120, 120, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[10:110, 10:110], image[20:120, 40:140])
    # Background more than the blur radius (7 px) away from the object: 0.1 x 200.
    assert np.all(out[0:2, :] == 20)
    assert np.all(out[:, 0:2] == 20)
    # Background near the object: 0.1 x the 15x15, sigma 3 Gaussian blur of the full image.
    blurred = cv2.GaussianBlur(image.astype(np.float32), (15, 15), 3)
    expected = np.clip(np.rint(0.1 * blurred[10:130, 30:150]), 0, 255)
    background = mask[10:130, 30:150] == 0
    diff = np.abs(out.astype(np.float32) - expected)[background]
    assert diff.max() <= 1.0
    assert out[background].max() <= 26


def test_crop_is_padded_to_a_centred_square() -> None:
    image = np.full((100, 200, 3), 90, dtype=np.uint8)
    mask = rect_mask((100, 200), (20, 60), (50, 130))
    # Crop 48 rows x 96 columns -> 96x96 square with 24 zero rows above and below.
    out = engineer_visual_prompt(image, mask, 96)
    assert out.shape == (96, 96, 3)
    assert not out[:24].any() and not out[72:].any()
    np.testing.assert_array_equal(out[28:68, 8:88], image[20:60, 50:130])
    tall = pad_to_square(np.ones((30, 10, 3), dtype=np.uint8))
    assert tall.shape == (30, 30, 3)
    assert tall[:, 10:20].all() and not tall[:, :10].any() and not tall[:, 20:].any()


def test_output_is_resized_to_the_model_resolution(scene) -> None:
    image, mask = scene
    out = engineer_visual_prompt(image, mask, 352)
    assert out.shape == (352, 352, 3) and out.dtype == np.uint8
    small = engineer_visual_prompt(image, mask, 60)
    assert small.shape == (60, 60, 3)
    # Object region (central 100 of 120 px) keeps its mean brightness after area resizing.
    assert abs(float(small[5:55, 5:55].mean()) - float(image[20:120, 40:140].mean())) < 3.0


def test_no_mask_uses_the_whole_image_undarkened() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    out = engineer_visual_prompt(image, None, 200)
    np.testing.assert_array_equal(out[50:150], image)
    assert not out[:50].any() and not out[150:].any()


def test_bool_and_integer_masks_are_equivalent(scene) -> None:
    image, mask = scene
    as_bool = engineer_visual_prompt(image, mask.astype(bool), 64)
    as_255 = engineer_visual_prompt(image, (mask * 255).astype(np.uint8), 64)
    as_int64 = engineer_visual_prompt(image, mask.astype(np.int64), 64)
    np.testing.assert_array_equal(as_bool, as_255)
    np.testing.assert_array_equal(as_bool, as_int64)


@pytest.mark.parametrize('bad_mask, message', [
    (np.zeros((200, 200), dtype=np.uint8), 'selects no pixel'),
    (np.ones((100, 200), dtype=np.uint8), 'does not match'),
    (np.ones((200, 200, 1), dtype=np.uint8), 'does not match'),
    (np.ones((200, 200), dtype=np.float32), 'bool or integer'),
    ([[1]], 'numpy array'),
])
def test_bad_masks_are_refused(scene, bad_mask, message) -> None:
    image, _ = scene
    with pytest.raises(ValueError, match=message):
        engineer_visual_prompt(image, bad_mask, 64)


@pytest.mark.parametrize('bad_image, message', [
    (np.zeros((20, 20, 3), dtype=np.float32), 'uint8'),
    (np.zeros((20, 20), dtype=np.uint8), r'\(H, W, 3\)'),
    (np.zeros((20, 20, 4), dtype=np.uint8), r'\(H, W, 3\)'),
    (np.zeros((0, 20, 3), dtype=np.uint8), 'empty'),
])
def test_bad_support_images_are_refused(bad_image, message) -> None:
    with pytest.raises(ValueError, match=message):
        engineer_visual_prompt(bad_image, None, 64)


def test_bad_out_size_and_margin_are_refused(scene) -> None:
    image, mask = scene
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match='out_size'):
            engineer_visual_prompt(image, mask, bad)
    with pytest.raises(ValueError, match='margin'):
        widened_box(mask, margin=-0.1)


def test_long_thin_support_image_is_shrunk_before_padding():
    from clipseg_ros.visual_prompt import engineer_visual_prompt
    thin = np.full((2, 16000, 3), 200, np.uint8)  # padding first would allocate 16000 x 16000
    out = engineer_visual_prompt(thin, None, 352)
    assert out.shape == (352, 352, 3) and out.dtype == np.uint8
    row = out[:, 176]
    # a thin grey line (area-averaged into one output row) centred on black padding
    assert row.max() >= 40 and row.min() == 0 and (row.max(axis=1) > 0).sum() <= 2
