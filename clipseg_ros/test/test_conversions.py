"""Conversions between sensor_msgs images and numpy, without initialising ROS."""

import struct

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from clipseg_ros import conversions
from clipseg_ros.conversions import ImageConversionError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def make_image(pixels: np.ndarray, encoding: str, row_padding: int = 0) -> Image:
    """Pack an (H, W, C) uint8 array as an Image, with optional padding bytes per row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, row_padding), 99, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('row_padding', [0, 3])
@pytest.mark.parametrize('encoding, packed', [
    ('rgb8', RGB),
    ('bgr8', RGB[:, :, ::-1]),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 17, np.uint8)])),
    ('bgra8', np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 17, np.uint8)])),
])
def test_colour_encodings_become_rgb(encoding, packed, row_padding):
    rgb = conversions.image_to_rgb(make_image(np.ascontiguousarray(packed), encoding, row_padding))
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB)


def test_mono8_is_replicated_to_three_channels():
    gray = RGB[:, :, 0]
    rgb = conversions.image_to_rgb(make_image(gray[:, :, None], 'mono8', row_padding=1))
    assert rgb.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], gray)


@pytest.mark.parametrize('mutate, reason', [
    (lambda m: setattr(m, 'data', bytes(m.data)[:-1]), 'expected step'),
    (lambda m: setattr(m, 'data', bytes(m.data) + b'\0'), 'expected step'),
    (lambda m: setattr(m, 'step', 20), 'shorter than a row'),
    (lambda m: setattr(m, 'width', 0), 'empty'),
    (lambda m: setattr(m, 'height', 0), 'empty'),
    (lambda m: setattr(m, 'encoding', 'not_an_encoding'), 'encoding'),
])
def test_malformed_images_are_refused_with_a_reason(mutate, reason):
    msg = make_image(RGB, 'rgb8')
    mutate(msg)
    with pytest.raises(ImageConversionError, match=reason):
        conversions.image_to_rgb(msg)


def test_absurd_declared_size_is_refused_before_allocating():
    # 4 bytes of data claiming a 10000 x 10000 image: refused on the declared size alone.
    msg = Image(height=10000, width=10000, encoding='rgb8', step=30000)
    msg.data = b'\0\0\0\0'
    with pytest.raises(ImageConversionError, match='max_image_pixels'):
        conversions.image_to_rgb(msg, max_pixels=1920 * 1080)


def test_absurdly_thin_image_is_refused_despite_few_pixels():
    msg = Image(height=1, width=10_000_000, encoding='mono8', step=10_000_000)
    msg.data = b'\0' * 3
    with pytest.raises(ImageConversionError, match='largest side'):
        conversions.image_to_rgb(msg, max_pixels=16_777_216)


def test_mask_from_mono8_with_padding():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 255
    result = conversions.mask_from_image(make_image(mask[:, :, None], 'mono8', row_padding=2))
    assert result.dtype == bool
    np.testing.assert_array_equal(result, mask > 0)
    with pytest.raises(ImageConversionError, match='mono8'):
        conversions.mask_from_image(make_image(RGB, 'rgb8'))


@pytest.mark.parametrize('extension', ['.png', '.jpg'])
def test_compressed_images_decode_to_rgb(extension):
    big = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format=extension[1:])
    msg.data = encoded.tobytes()
    assert conversions.compressed_dimensions(encoded.tobytes()) == (64, 48)
    rgb = conversions.compressed_to_rgb(msg)
    assert rgb.shape == (48, 64, 3)
    if extension == '.png':
        np.testing.assert_array_equal(rgb, big)
    else:
        assert np.abs(rgb.astype(int) - big).mean() < 20  # lossy, but the same picture


def test_compressed_header_claiming_huge_size_is_refused_before_decoding():
    ok, encoded = cv2.imencode('.png', RGB)
    assert ok
    data = bytearray(encoded.tobytes())
    data[16:24] = struct.pack('>II', 10000, 10000)  # IHDR width/height
    msg = CompressedImage(format='png')
    msg.data = bytes(data)
    with pytest.raises(ImageConversionError, match='max_image_pixels'):
        conversions.compressed_to_rgb(msg, max_pixels=1920 * 1080)


@pytest.mark.parametrize('payload', [b'', b'garbage that is no image', b'\xff\xd8\xff\xe0\x00'])
def test_compressed_garbage_is_refused(payload):
    msg = CompressedImage(format='jpeg')
    msg.data = payload
    with pytest.raises(ImageConversionError):
        conversions.compressed_to_rgb(msg)


def test_truncated_png_is_refused():
    ok, encoded = cv2.imencode('.png', RGB)
    msg = CompressedImage(format='png')
    msg.data = encoded.tobytes()[:40]
    with pytest.raises(ImageConversionError, match='does not decode'):
        conversions.compressed_to_rgb(msg)


@pytest.mark.parametrize('encoding, pixels', [
    ('mono8', RGB[:, :, 1].copy()),
    ('rgb8', RGB),
    ('32FC1', RNG.random((5, 7), dtype=np.float32)),
])
def test_publishing_round_trip_keeps_header_and_pixels(encoding, pixels):
    header = Header(frame_id='camera_optical')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = conversions.array_to_image(pixels, encoding, header)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.header.frame_id == 'camera_optical' and msg.header.stamp.nanosec == 345
    assert msg.step * msg.height == len(msg.data)
    np.testing.assert_array_equal(conversions.image_to_array(msg), pixels)


def test_publishing_refuses_mismatched_arrays():
    with pytest.raises(ValueError, match='32FC1'):
        conversions.array_to_image(RGB[:, :, 0], '32FC1')
    with pytest.raises(ValueError, match='encoding'):
        conversions.array_to_image(RGB, 'jpeg')


@pytest.mark.skipif(not conversions.bridge_available(), reason='cv_bridge is not installed here '
                    '(it comes from a ROS install via apt, not PyPI); the numpy path is tested')
def test_cv_bridge_extends_encodings():
    rgb16 = (RGB.astype(np.uint16) * 257)
    msg = Image(height=5, width=7, encoding='rgb16', step=7 * 6)
    msg.data = rgb16.astype('<u2').tobytes()
    assert conversions.image_to_rgb(msg).shape == (5, 7, 3)
