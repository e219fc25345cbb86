"""
The tracking benchmark's scenes: named sequences of frames with per-frame identities, what a
segmenter would make of each frame (a label image with CLIPSeg-like flaws, a score image, an
aligned depth image with a sensor's flaws), and the ground-truth boxes. numpy + OpenCV, seeded.

Two prompts, as in tests: 1 = red circle, 2 = green square. The segmenter's flaws, per frame:
every object's mask eroded or dilated by 0 to ``flicker_px`` pixels; with ``dropout`` the
chance that an object is missing from the labels; with ``false_blobs`` the chance of a blob of
a prompt on the bare table; depth with Gaussian noise and holes (NaN) over a fraction of the
image; ``dropped`` frames never reach the tracker (their stamps leave a gap).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from clipseg_ros.tools.scene_sequences import FRAME_PERIOD_S, SequenceFrame, sequence, Solid
import cv2
import numpy as np

KINDS = (('circle', 'red'), ('square', 'green'))
OBJECT_SCORE = 0.85        # mean probability over a real object's mask
BLOB_SCORE = (0.5, 0.75)   # a false blob's, lower as CLIPSeg's are
MIN_VISIBLE_PIXELS = 40    # fewer visible pixels: the object is not in the ground truth


@dataclass(frozen=True)
class Flaws:
    """What goes wrong between the scene and the tracker."""

    flicker_px: int = 2
    dropout: float = 0.0
    false_blobs: float = 0.0
    depth_noise_m: float = 0.0
    depth_holes: float = 0.0
    dropped: frozenset = frozenset()


@dataclass
class Scenario:
    """A named sequence, its flaws, and what a tracker is expected to go through."""

    name: str
    frames: list[SequenceFrame]
    flaws: Flaws = field(default_factory=Flaws)
    about: str = ''


@dataclass
class Observation:
    """One frame as the tracker sees it, with its ground truth."""

    index: int
    stamp: float
    rgb: np.ndarray                # (H, W, 3) uint8
    labels: np.ndarray             # (H, W) uint8, 0 = none, k = prompt k - 1
    confidence: np.ndarray         # (H, W) float32
    depth_m: np.ndarray            # (H, W) float32, NaN = no reading
    truth_ids: list[int]           # identities of the objects visible enough
    truth_boxes: np.ndarray        # (N, 4) x, y, w, h of their visible masks


def mask_box(mask: np.ndarray) -> np.ndarray:
    """x, y, w, h of a boolean mask's pixels."""
    rows, columns = np.nonzero(mask)
    return np.array([columns.min(), rows.min(), columns.max() - columns.min() + 1,
                     rows.max() - rows.min() + 1])


def observe(frame: SequenceFrame, flaws: Flaws, rng: np.random.Generator) -> Observation:
    """What the segmenter and the depth camera give for a frame (see the module's notes)."""
    scene = frame.scene
    labels = np.zeros(scene.depth_m.shape, np.uint8)
    confidence = np.zeros(labels.shape, np.float32)
    truth_ids, truth_boxes = [], []
    for item, identity in zip(scene.objects, frame.identities):
        if item.mask.sum() >= MIN_VISIBLE_PIXELS:
            truth_ids.append(identity)
            truth_boxes.append(mask_box(item.mask))
        if rng.random() < flaws.dropout:
            continue
        radius = int(rng.integers(0, flaws.flicker_px + 1))
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        change = cv2.dilate if rng.random() < 0.5 else cv2.erode
        mask = change(item.mask.view(np.uint8), kernel).view(bool) & (labels == 0)
        labels[mask] = KINDS.index(item.kind) + 1
        confidence[mask] = OBJECT_SCORE + rng.uniform(-0.05, 0.05)
    if rng.random() < flaws.false_blobs:
        _false_blob(labels, confidence, rng)
    depth = scene.depth_m.astype(np.float32, copy=True)
    if flaws.depth_noise_m:
        depth += rng.normal(0.0, flaws.depth_noise_m, depth.shape).astype(np.float32)
    if flaws.depth_holes:
        depth[_holes(depth.shape, flaws.depth_holes, rng)] = np.nan
    rgb = np.clip(scene.rgb * 255.0 if scene.rgb.dtype != np.uint8 else scene.rgb, 0, 255)
    return Observation(frame.index, frame.stamp, rgb.astype(np.uint8), labels, confidence,
                       depth, truth_ids,
                       np.array(truth_boxes, np.int64).reshape(-1, 4))


def _false_blob(labels: np.ndarray, confidence: np.ndarray, rng: np.random.Generator) -> None:
    """An ellipse of a random prompt on the bare table."""
    height, width = labels.shape
    centre = (int(rng.integers(10, width - 10)), int(rng.integers(10, height - 10)))
    axes = (int(rng.integers(5, 14)), int(rng.integers(5, 14)))
    blob = np.zeros(labels.shape, np.uint8)
    cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    blob = blob.view(bool) & (labels == 0)
    labels[blob] = int(rng.integers(1, len(KINDS) + 1))
    confidence[blob] = rng.uniform(*BLOB_SCORE)


def _holes(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Blocks of missing depth covering about ``fraction`` of the image."""
    holes = np.zeros(shape, bool)
    height, width = shape
    while holes.mean() < fraction:
        size = int(rng.integers(4, 16))
        y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        holes[y:y + size, x:x + size] = True
    return holes


# ---------------------------------------------------------------------------- the scenes


def crossing(seed: int = 1) -> Scenario:
    """Two red circles 0.12 m apart in depth cross in the image (the nearer one hides the
    other for a few frames)."""
    solids = [Solid(0, 'circle', 'red', (0.2, 0.68), size=0.035, height=0.12,
                    velocity=(0.006, 0.0)),
              Solid(1, 'circle', 'red', (0.8, 0.5), size=0.035, height=0.04,
                    velocity=(-0.006, 0.0))]
    return Scenario('crossing at two depths', sequence(seed, solids, 60, distance=0.6),
                    about='pass in the image, 0.12 m apart in depth')


def touch_and_part(count: int = 2, seed: int = 2, contact_frames: int = 9) -> Scenario:
    """
    ``count`` (2 or 3) equal red circles at one depth: the outer ones approach the middle of
    the row, stop for ``contact_frames`` frames (in contact: one region in the labels) and part.
    """
    approach, speed = 12, 0.0085
    still, away = approach, approach + contact_frames
    spots = {2: [0.32, 0.68], 3: [0.3, 0.5, 0.7]}[count]
    solids = []
    for identity, spot in enumerate(spots):
        sign = 0.0 if abs(spot - 0.5) < 1e-6 else (1.0 if spot < 0.5 else -1.0)
        velocity = (sign * speed, 0.0)
        solids.append(Solid(identity, 'circle', 'red', (spot, 0.55), size=0.045, height=0.06,
                            velocity=velocity,
                            moves=((still, (0.0, 0.0)), (away, (-velocity[0], 0.0)))))
    frames = sequence(seed, solids, away + approach + 10, distance=0.7)
    touching = sum(cv2.connectedComponents(frame.scene.mask_of('circle', 'red')
                                           .view(np.uint8))[0] < count + 1 for frame in frames)
    return Scenario(f'touch and part, {count} of a kind', frames,
                    about=f'in contact in {touching} frames (fewer regions than objects), '
                    'at one depth')


def _moving_three(seed: int, frames: int, hidden: range = range(0), **options):
    solids = [Solid(0, 'circle', 'red', (0.3, 0.45), velocity=(0.0015, 0.0005)),
              Solid(1, 'circle', 'red', (0.7, 0.5), velocity=(-0.001, 0.001), hidden=hidden),
              Solid(2, 'square', 'green', (0.5, 0.8), size=0.04, velocity=(0.0, -0.001))]
    return sequence(seed, solids, frames, distance=0.6, **options)


def occlusion(hidden_frames: int, seed: int = 3) -> Scenario:
    """Three objects moving; one of the two red circles is hidden for ``hidden_frames``."""
    frames = _moving_three(seed, 30 + hidden_frames, hidden=range(15, 15 + hidden_frames))
    return Scenario(f'occlusion, {hidden_frames} frames', frames,
                    about=f'a red circle hidden {hidden_frames * FRAME_PERIOD_S:.2f} s')


def leaving_view(seed: int = 4) -> Scenario:
    """A red circle goes out of the image on the right, stays out 20 frames, comes back."""
    out, back = 10, 40
    solids = [Solid(0, 'circle', 'red', (0.3, 0.5)),
              Solid(1, 'circle', 'red', (0.8, 0.45), velocity=(0.02, 0.0),
                    moves=((out, (0.0, 0.0)), (back - out, (-0.02, 0.0)),
                           (back, (0.0, 0.0)))),
              Solid(2, 'square', 'green', (0.5, 0.8), size=0.04)]
    return Scenario('leaving and re-entering view', sequence(seed, solids, 60, distance=0.6),
                    about='out of the image for about 20 frames')


def dropped_frames(seed: int = 5) -> Scenario:
    """Three moving objects; a third of the frames never arrive, one gap of 5 in a row."""
    rng = np.random.default_rng(seed)
    dropped = {int(k) for k in np.flatnonzero(rng.random(60) < 0.3)} | set(range(30, 35))
    return Scenario('dropped frames', _moving_three(seed, 60),
                    Flaws(dropped=frozenset(dropped - {0})),
                    about=f'{len(dropped - {0})} of 60 frames dropped')


def depth_flaws(seed: int = 6) -> Scenario:
    """Three moving objects; depth with 1 cm noise and holes over 15 % of the image."""
    return Scenario('depth noise and holes', _moving_three(seed, 60),
                    Flaws(depth_noise_m=0.01, depth_holes=0.15),
                    about='1 cm noise, 15 % holes')


def panning(seed: int = 7) -> Scenario:
    """Three objects while the camera pans 6 mm a frame sideways and back."""
    def path(frame: int) -> tuple[float, float, float]:
        return (0.006 * (frame if frame < 30 else 60 - frame), 0.0, 0.0)
    return Scenario('panning camera', _moving_three(seed, 60, camera_path=path),
                    about='6 mm a frame, out and back')


def flicker(seed: int = 8) -> Scenario:
    """Three moving objects; masks drop out (5 %) and false blobs appear (half the frames)."""
    return Scenario('mask flicker', _moving_three(seed, 60),
                    Flaws(dropout=0.05, false_blobs=0.5),
                    about='5 % dropouts, a false blob in half the frames')


def scenario_makers() -> dict[str, Callable[[], Scenario]]:
    """Every scene of the benchmark by a short name, in the order of its table (made lazily:
    rendering takes a while)."""
    return {'crossing': crossing, 'touch2': lambda: touch_and_part(2),
            'touch3': lambda: touch_and_part(3), 'occlusion5': lambda: occlusion(5),
            'occlusion20': lambda: occlusion(20), 'leaving': leaving_view,
            'dropped': dropped_frames, 'depth': depth_flaws, 'panning': panning,
            'flicker': flicker}


def observations(scenario: Scenario, seed: int = 0) -> list[Observation]:
    """The frames of a scenario that reach the tracker."""
    rng = np.random.default_rng(seed)
    return [observe(frame, scenario.flaws, rng) for frame in scenario.frames
            if frame.index not in scenario.flaws.dropped]
