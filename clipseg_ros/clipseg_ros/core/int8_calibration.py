"""
Calibration frames for int8: the images NNCF runs through the network to choose each
quantized layer's range. No ROS.

A :class:`CalibrationSet` is a digest (part of the compiled-model cache key, so other frames
make another entry) and a way to make its samples: RGB frames, each with the text prompts to
segment it for. The frames are made only when the network is quantized (a cache hit needs none).
A folder of the user's own camera frames is checked whole when it is read (at configure), so a
bad folder is refused with the reason before anything is quantized.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
import hashlib
from pathlib import Path

import cv2
import numpy as np

# Bump when the way samples are made from a set changes, so older int8 entries are not used.
CALIBRATION_FORMAT = '1'
# Frames a set contributes at most (a folder with more is sampled evenly): NNCF's statistics
# settle by then, and quantizing takes time in proportion.
MAX_CALIBRATION_FRAMES = 64
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
MIN_IMAGE_SIDE = 32
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_BYTES = 64 << 20
# Prompts for frames that come without any (a user's folder): everyday things a robot's camera
# sees, two a frame in turn.
GENERIC_PROMPTS = ('an object', 'a person', 'the floor', 'a table', 'a cup', 'a box',
                   'a bottle', 'a chair', 'a door', 'a wall', 'a hand', 'a tool')
PROMPTS_PER_FRAME = 2


@dataclass(frozen=True)
class Int8Calibration:
    """What the OpenVINO back end quantizes from: the set's digest and description, the NNCF
    version, and the samples (the network's inputs: pixels (1, 3, r, r) and embeddings (N, D))
    at an input size, made by the engine."""

    digest: str
    description: str
    samples: Callable[[int], list[list[np.ndarray]]]
    nncf_version: str


class CalibrationError(ValueError):
    """A calibration folder or set that cannot be used; the message says why."""


@dataclass(frozen=True)
class CalibrationSet:
    """Frames for int8 calibration: what they are, their digest, and how to make them."""

    description: str
    digest: str
    count: int
    # Yields (RGB uint8 frame, text prompts for it), ``count`` times.
    samples: Callable[[], Iterator[tuple[np.ndarray, tuple[str, ...]]]]


def frames_calibration_set(frames: Sequence[np.ndarray], description: str,
                           prompts: Sequence[Sequence[str]] | None = None) -> CalibrationSet:
    """A set of frames in memory (tests, benchmarks), each with its prompts (generic ones by
    default); the digest covers the pixels and the prompts."""
    if len(frames) == 0:
        raise CalibrationError('no calibration frames given')
    frames = [_checked_frame(np.asarray(frame), f'frame {index}')
              for index, frame in enumerate(frames[:MAX_CALIBRATION_FRAMES])]
    texts = [tuple(p) for p in prompts] if prompts is not None else \
        [generic_prompts(index) for index in range(len(frames))]
    if len(texts) < len(frames) or any(not t for t in texts[:len(frames)]):
        raise CalibrationError('every calibration frame needs at least one prompt')
    digest = hashlib.sha256(CALIBRATION_FORMAT.encode())
    for frame, text in zip(frames, texts):
        digest.update(f'{frame.shape};{"|".join(text)};'.encode())
        digest.update(np.ascontiguousarray(frame).tobytes())
    return CalibrationSet(description, digest.hexdigest(), len(frames),
                          lambda: iter(zip(frames, texts)))


def generic_prompts(index: int) -> tuple[str, ...]:
    """The generic prompts of the ``index``-th frame of a set that has none of its own."""
    return tuple(GENERIC_PROMPTS[(index * PROMPTS_PER_FRAME + k) % len(GENERIC_PROMPTS)]
                 for k in range(PROMPTS_PER_FRAME))


def folder_calibration_set(folder: str | Path) -> CalibrationSet:
    """
    The images of ``folder`` (its own files, not sub-folders; up to
    :data:`MAX_CALIBRATION_FRAMES`, sampled evenly in name order) with generic prompts.

    Every chosen image is decoded and checked now: CalibrationError names the folder or the
    file and what is wrong (missing, not a folder, no images, unreadable, too small or large).
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise CalibrationError(f'calibration folder {path} does not exist')
    if not path.is_dir():
        raise CalibrationError(f'calibration folder {path} is not a folder')
    try:
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as error:
        raise CalibrationError(f'calibration folder {path} cannot be read: {error}') from error
    if not files:
        raise CalibrationError(f'calibration folder {path} holds no images '
                               f'({", ".join(IMAGE_SUFFIXES)})')
    if len(files) > MAX_CALIBRATION_FRAMES:
        picks = np.linspace(0, len(files) - 1, MAX_CALIBRATION_FRAMES).round().astype(int)
        files = [files[i] for i in picks]
    digest = hashlib.sha256(CALIBRATION_FORMAT.encode())
    for index, file in enumerate(files):
        data = _read_bytes(file)
        _decode(data, file)  # the whole set is checked before anything is quantized
        digest.update(f'{file.name};{len(data)};{"|".join(generic_prompts(index))};'.encode())
        digest.update(data)

    def samples() -> Iterator[tuple[np.ndarray, tuple[str, ...]]]:
        for index, file in enumerate(files):
            yield _decode(_read_bytes(file), file), generic_prompts(index)
    return CalibrationSet(f'{len(files)} images of {path}', digest.hexdigest(), len(files),
                          samples)


def _read_bytes(file: Path) -> bytes:
    try:
        size = file.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise CalibrationError(f'calibration image {file} has {size} bytes, more than '
                                   f'{MAX_IMAGE_BYTES}')
        return file.read_bytes()
    except OSError as error:
        raise CalibrationError(f'calibration image {file} cannot be read: {error}') from error


def _decode(data: bytes, file: Path) -> np.ndarray:
    """The image in ``data`` as RGB uint8, or CalibrationError saying why not."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f'calibration image {file} is not an image OpenCV can decode')
    return _checked_frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), f'calibration image {file}')


def _checked_frame(frame: np.ndarray, name: str) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise CalibrationError(f'{name} must be (H, W, 3) uint8 RGB, got {frame.shape} '
                               f'{frame.dtype}')
    height, width = frame.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise CalibrationError(
            f'{name} is {width}x{height}: calibration frames need sides of at least '
            f'{MIN_IMAGE_SIDE} px and at most {MAX_IMAGE_PIXELS} pixels (camera frames)')
    return frame
