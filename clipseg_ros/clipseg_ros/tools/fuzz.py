"""Seeded generators of malformed camera frames and service requests, for robustness tests.

Every message is small on the wire (at most a few tens of kB) however large the sizes it
claims, so a fuzz run measures the node's validation, not the machine's memory.
"""

import array

import cv2
import numpy as np
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
from sensor_msgs.msg import CompressedImage, Image

ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'RGB8', 'mono16', '32FC1', 'yuv422',
             'bayer_rggb8', '', 'rgb8 ', 'jpeg', '\u00e9\u00e8', 'x' * 300]
SIZES = [0, 1, 2, 3, 7, 16, 63, 64, 65, 480, 4096, 65535, 2 ** 31 - 1, 2 ** 32 - 1]
MAX_PAYLOAD = 48 * 1024


def _byte_array(data: bytes) -> array.array:
    return array.array('B', data)


def _payload(rng: np.random.Generator, length: int) -> bytes:
    return rng.integers(0, 256, size=min(length, MAX_PAYLOAD), dtype=np.uint8).tobytes()


def malformed_image(rng: np.random.Generator) -> Image:
    """An Image whose encoding, sizes, step and data length disagree in a random way."""
    msg = Image()
    msg.encoding = ENCODINGS[rng.integers(len(ENCODINGS))]
    small = rng.random() < 0.6
    pick = (lambda: int(rng.integers(0, 40))) if small else \
        (lambda: int(SIZES[rng.integers(len(SIZES))]))
    msg.width, msg.height = pick(), pick()
    channels = int(rng.integers(1, 5))
    row = msg.width * channels
    step_choices = [row, max(row - 1, 0), row + int(rng.integers(1, 9)), 0,
                    int(rng.integers(0, 2 ** 32))]
    msg.step = min(int(step_choices[rng.integers(len(step_choices))]), 2 ** 32 - 1)
    exact = msg.step * msg.height
    length_choices = [exact, exact - 1, exact + 1, 0, int(rng.integers(0, 4096))]
    msg.data = _byte_array(_payload(rng, max(0, int(length_choices[rng.integers(5)]))))
    msg.is_bigendian = int(rng.integers(0, 2))
    return msg


def malformed_compressed(rng: np.random.Generator) -> CompressedImage:
    """Garbage, truncated or size-lying PNG/JPEG data."""
    msg = CompressedImage(format=['jpeg', 'png', 'rgb8; jpeg compressed bgr8', ''][
        rng.integers(4)])
    picture = rng.integers(0, 256, size=(int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3),
                           dtype=np.uint8)
    ok, encoded = cv2.imencode(['.png', '.jpg'][rng.integers(2)], picture)
    data = bytearray(encoded.tobytes())
    kind = rng.integers(5)
    if kind == 0:
        data = bytearray(_payload(rng, int(rng.integers(0, 2000))))
    elif kind == 1:
        data = data[:int(rng.integers(0, len(data)))]
    elif kind == 2 and data[:4] == b'\x89PNG':
        data[16:24] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
    else:
        for _ in range(int(rng.integers(1, 20))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    msg.data = _byte_array(bytes(data))
    return msg


def random_text(rng: np.random.Generator) -> str:
    kind = rng.integers(6)
    if kind == 0:
        return ''
    if kind == 1:
        return ' \t\n' * int(rng.integers(1, 4))
    if kind == 2:
        return 'a' * int(rng.integers(200, 5000))
    if kind == 3:
        return ''.join(chr(int(c)) for c in rng.integers(0x20, 0x2FFF, size=12))
    return ['mug', 'the red mug', 'a person', 'floor'][rng.integers(4)]


def malformed_text_request(rng: np.random.Generator) -> SetTextPrompts.Request:
    count = int([0, 1, 2, 5, 17, 300][rng.integers(6)])
    return SetTextPrompts.Request(prompts=[random_text(rng) for _ in range(count)])


def malformed_image_prompt_request(rng: np.random.Generator) -> SetImagePrompt.Request:
    request = SetImagePrompt.Request(label=random_text(rng), append=bool(rng.integers(0, 2)))
    request.image = malformed_image(rng)
    kind = rng.integers(3)
    if kind == 1:
        request.mask = malformed_image(rng)
    elif kind == 2:  # a well-formed mask of the image's claimed size, mostly empty
        width, height = min(request.image.width, 64), min(request.image.height, 64)
        request.mask = Image(width=width, height=height, encoding='mono8', step=width)
        request.mask.data = _byte_array(bytes(width * height))
    return request


def malformed_segment_request(rng: np.random.Generator) -> Segment.Request:
    request = Segment.Request()
    if rng.random() < 0.8:
        request.image = malformed_image(rng)
    if rng.random() < 0.5:
        request.prompts = [random_text(rng) for _ in range(int(rng.integers(0, 4)))]
    if rng.random() < 0.3:
        request.camera = random_text(rng)  # almost always a camera the node does not serve
    return request


# ---------------------------------------------------------------------------- objects


def random_labels(rng: np.random.Generator, height: int, width: int,
                  prompt_count: int) -> np.ndarray:
    """A label image with 0..prompt_count: empty, one label, blocks, noise or many specks."""
    kind = rng.integers(6)
    if kind == 0:
        return np.zeros((height, width), np.uint8)
    if kind == 1:
        return np.full((height, width), int(rng.integers(1, prompt_count + 1)), np.uint8)
    if kind == 2:  # pixel noise: thousands of 8-connected specks
        return rng.integers(0, prompt_count + 1, (height, width)).astype(np.uint8)
    if kind == 3:  # isolated specks on a grid, the most components a size allows
        labels = np.zeros((height, width), np.uint8)
        labels[::2, ::2] = rng.integers(1, prompt_count + 1)
        return labels
    cell = int(rng.integers(2, 24))
    blocks = rng.integers(0, prompt_count + 1, (-(-height // cell), -(-width // cell)))
    labels = np.kron(blocks, np.ones((cell, cell), np.int64))[:height, :width]
    return labels.astype(np.uint8)


def odd_depth_m(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) float32 metres as depth_in_metres gives them: NaN where invalid, odd elsewhere."""
    kind = rng.integers(6)
    if kind == 0:
        return np.full((height, width), np.nan, np.float32)  # no valid reading at all
    if kind == 1:  # huge jumps between neighbours
        depth = np.where(rng.random((height, width)) < 0.5, 0.05, 9.99)
    elif kind == 2:
        depth = rng.uniform(0.0, 10.0, (height, width))
    elif kind == 3:  # a constant plane: every instance at one depth
        depth = np.full((height, width), rng.uniform(0.01, 10.0))
    elif kind == 4:  # extreme but finite values
        depth = rng.choice([1e-30, 1e-6, 3e38, 1.0], (height, width))
    else:
        depth = np.full((height, width), 1.0) + np.cumsum(rng.normal(0, 0.05, width))[None, :]
    depth = depth.astype(np.float32)
    depth[rng.random((height, width)) < rng.uniform(0.0, 0.9)] = np.nan
    return depth


def odd_depth_image(rng: np.random.Generator, width: int, height: int) -> Image:
    """A well-formed depth Image (16UC1 mm or 32FC1 m) with odd values: all invalid, NaN, inf,
    negative, huge jumps, noise."""
    kind = rng.integers(5)
    if kind == 0:
        depth = np.zeros((height, width))
    elif kind == 1:
        depth = np.where(rng.random((height, width)) < 0.5, 0.1, 50.0)
    elif kind == 2:
        depth = rng.choice([np.nan, np.inf, -np.inf, -1.0, 0.0, 0.5, 1e30], (height, width))
    elif kind == 3:
        depth = rng.uniform(0.0, 12.0, (height, width))
    else:
        depth = np.full((height, width), rng.uniform(0.2, 3.0))
    if rng.random() < 0.5:
        with np.errstate(invalid='ignore'):
            millimetres = np.nan_to_num(depth * 1000.0, nan=0.0, posinf=65535, neginf=0.0)
        data, encoding = np.clip(millimetres, 0, 65535).astype(np.uint16), '16UC1'
    else:
        data, encoding = depth.astype(np.float32), '32FC1'
    msg = Image(width=width, height=height, encoding=encoding, step=width * data.itemsize)
    msg.data = _byte_array(data.tobytes())
    return msg


# ---------------------------------------------------------------------------- depth timing

DEPTH_TIMINGS = ('before', 'after', 'missing', 'reordered', 'stale')


def depth_timing(rng: np.random.Generator) -> tuple[str, float]:
    """
    How a frame's depth image (with its camera_info) comes, and a delay in seconds:
    'before' the frame; 'after' it by the delay; 'missing'; 'reordered': after it by the delay,
    but a depth image stamped later than the frame comes first; 'stale': an old depth image
    comes first, then the frame's own after the delay.
    """
    return DEPTH_TIMINGS[rng.integers(len(DEPTH_TIMINGS))], float(rng.uniform(0.0, 0.06))
