"""sensor_msgs image messages <-> numpy arrays, with validation before any allocation.

Pure conversion code: no rclpy.init, no node.  Every check on a message's declared sizes runs
before a buffer of that size is created, so a malformed or hostile message costs nothing.
cv_bridge is used, when importable, only to accept encodings beyond the five handled natively
(16-bit, Bayer, YUV...); the native numpy path is the one always available and always tested.
"""

import array
import struct

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

try:  # cv_bridge comes with a ROS install from apt, not from PyPI.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None

# Encodings converted natively: name -> channels.
NATIVE_ENCODINGS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# Longest side accepted whatever the pixel count: a 1 x 16M image passes a pixel limit but makes
# per-row/column work (and any padding to a square) enormous.
MAX_IMAGE_SIDE = 16384
# A compressed frame larger than this many bytes per allowed pixel is refused before decoding.
MAX_COMPRESSED_BYTES_PER_PIXEL = 4


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image; the text says why."""


def bridge_available() -> bool:
    """Return True when cv_bridge can be imported on this machine."""
    return CvBridge is not None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f'image size {width}x{height} is empty')
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ImageConversionError(
            f'image size {width}x{height} exceeds the largest side, {MAX_IMAGE_SIDE} pixels')
    if width * height > max_pixels:
        raise ImageConversionError(
            f'image size {width}x{height} exceeds max_image_pixels ({max_pixels})')


def validate_image(msg: Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Check an Image's declared layout without touching its pixels.

    Raises ImageConversionError for zero or oversized images, an encoding neither native nor
    convertible by cv_bridge, a `step` shorter than a row, or `data` whose length is not
    `step * height`.
    """
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels)
    encoding = msg.encoding.lower()
    channels = NATIVE_ENCODINGS.get(encoding)
    if channels is None:
        if CvBridge is None:
            raise ImageConversionError(
                f"unsupported encoding '{msg.encoding}' (supported: "
                f"{', '.join(NATIVE_ENCODINGS)}; install cv_bridge for more)")
        channels = 1  # cv_bridge checks the real layout; bound the row by one byte per pixel
    if step < width * channels:
        raise ImageConversionError(
            f'step {step} is shorter than a row of {width} {encoding} pixels '
            f'({width * channels} bytes)')
    if len(msg.data) != step * height:
        raise ImageConversionError(
            f'data has {len(msg.data)} bytes, expected step * height = {step * height}')


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Convert a valid sensor_msgs/Image to a contiguous (H, W, 3) uint8 RGB array.

    Validates with validate_image first; raises ImageConversionError on any problem.
    """
    validate_image(msg, max_pixels)
    encoding = msg.encoding.lower()
    channels = NATIVE_ENCODINGS.get(encoding)
    if channels is None:
        return _convert_with_bridge(msg)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, :width * channels].reshape(height, width, channels)
    if encoding == 'rgb8':
        return np.ascontiguousarray(pixels)
    if encoding == 'bgr8':
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if encoding == 'rgba8':
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding == 'bgra8':
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.repeat(pixels, 3, axis=2)  # mono8


def _convert_with_bridge(msg: Image) -> np.ndarray:
    try:
        rgb = CvBridge().imgmsg_to_cv2(msg, desired_encoding='rgb8')
    except Exception as error:  # cv_bridge raises several types for bad input
        raise ImageConversionError(
            f"cannot convert encoding '{msg.encoding}' with cv_bridge: {error}") from error
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def mask_from_image(msg: Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Convert a mono8 mask message to an (H, W) bool array (nonzero = object)."""
    if msg.encoding.lower() != 'mono8':
        raise ImageConversionError(f"mask encoding must be mono8, got '{msg.encoding}'")
    validate_image(msg, max_pixels)
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(int(msg.height), int(msg.step))
    return rows[:, :int(msg.width)] != 0


def compressed_dimensions(data: bytes) -> tuple | None:
    """Read (width, height) from a PNG or JPEG header without decoding; None if not found."""
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and data[12:16] == b'IHDR':
        width, height = struct.unpack('>II', data[16:24])
        return width, height
    if data[:2] == b'\xff\xd8':
        offset = 2
        while offset + 4 <= len(data):
            if data[offset] != 0xFF:
                return None
            marker = data[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                offset += 2
                continue
            (length,) = struct.unpack('>H', data[offset + 2:offset + 4])
            # Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if offset + 9 > len(data):
                    return None
                height, width = struct.unpack('>HH', data[offset + 5:offset + 9])
                return width, height
            offset += 2 + length
    return None


def validate_compressed(msg: CompressedImage,
                        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple:
    """Check a CompressedImage's size from its PNG/JPEG header; return (width, height)."""
    data = msg.data
    if len(data) == 0:
        raise ImageConversionError('compressed image has no data')
    if len(data) > max_pixels * MAX_COMPRESSED_BYTES_PER_PIXEL:
        raise ImageConversionError(f'compressed image of {len(data)} bytes is too large')
    dimensions = compressed_dimensions(bytes(data[:262144]))
    if dimensions is None:
        raise ImageConversionError(
            f"compressed data (format '{msg.format}') is neither a readable PNG nor JPEG")
    _check_size(*dimensions, max_pixels)
    return dimensions


def compressed_to_rgb(msg: CompressedImage,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a JPEG or PNG sensor_msgs/CompressedImage to (H, W, 3) uint8 RGB.

    The size in the file header is checked against `max_pixels` before decoding, so a small
    message claiming a huge image is refused without allocating it.
    """
    dimensions = validate_compressed(msg, max_pixels)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    # The header size is what was checked: EXIF rotation would swap it, so ignore it.
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        raise ImageConversionError(f"compressed image (format '{msg.format}') does not decode")
    if (decoded.shape[1], decoded.shape[0]) != dimensions:
        raise ImageConversionError('decoded size disagrees with the compressed header')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def byte_array(pixels: np.ndarray) -> array.array:
    # array.array('B') is what the generated setter stores; frombytes is a single memcpy,
    # where assigning a numpy array or list would be checked element by element.
    buffer = array.array('B')
    buffer.frombytes(pixels.reshape(-1).view(np.uint8))
    return buffer


def array_to_image(pixels: np.ndarray, encoding: str, header=None) -> Image:
    """Build a sensor_msgs/Image from an array: mono8 / rgb8 (uint8), mono16, 32FC1 (float32)."""
    expected = {'mono8': (np.uint8, 2), 'rgb8': (np.uint8, 3), '32FC1': (np.float32, 2),
                'mono16': (np.uint16, 2)}
    if encoding not in expected:
        raise ValueError(f"cannot publish encoding '{encoding}'")
    dtype, ndim = expected[encoding]
    if pixels.dtype != dtype or pixels.ndim != ndim or (ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(
            f'{encoding} needs a {ndim}-d {np.dtype(dtype).name} array, got '
            f'{pixels.ndim}-d {pixels.dtype}')
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(np.little_endian is False)
    msg.step = int(pixels.strides[0])
    msg.data = byte_array(pixels)
    return msg


def image_to_array(msg: Image) -> np.ndarray:
    """Inverse of array_to_image for mono8, rgb8, mono16 and 32FC1 (clients and tests)."""
    layouts = {'mono8': (np.uint8, 1), 'rgb8': (np.uint8, 3), '32FC1': (np.float32, 1),
               'mono16': (np.uint16, 1)}
    if msg.encoding not in layouts:
        raise ImageConversionError(f"unsupported encoding '{msg.encoding}'")
    dtype, channels = layouts[msg.encoding]
    row_bytes = msg.width * channels * np.dtype(dtype).itemsize
    if msg.step < row_bytes or len(msg.data) != msg.step * msg.height:
        raise ImageConversionError('image data does not match its width, height and step')
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = np.ascontiguousarray(rows[:, :row_bytes]).view(dtype)
    if msg.is_bigendian != int(not np.little_endian) and dtype != np.uint8:
        pixels = pixels.byteswap()
    shape = (msg.height, msg.width, 3) if channels == 3 else (msg.height, msg.width)
    return pixels.reshape(shape)


def validate_frame(msg: Image | CompressedImage, max_pixels: int) -> None:
    """Check a camera frame, raw or compressed, before anything is allocated for it."""
    if isinstance(msg, CompressedImage):
        validate_compressed(msg, max_pixels)
    else:
        validate_image(msg, max_pixels)


def frame_to_rgb(msg: Image | CompressedImage, max_pixels: int) -> np.ndarray:
    """A camera frame, raw or compressed, as an (H, W, 3) uint8 RGB array."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg, max_pixels)
    return image_to_rgb(msg, max_pixels)
