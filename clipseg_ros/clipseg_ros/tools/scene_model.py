"""
The vocabulary of the synthetic tabletop scenes: shapes, colours, phrasings, the camera and
the ground truth a rendered scene carries. numpy only.
"""

from dataclasses import dataclass, field
from typing import Sequence

from clipseg_ros.core.depth_targets import CameraModel
import numpy as np

SHAPES = ('circle', 'square', 'triangle', 'star')
COLOURS = ('red', 'green', 'blue', 'yellow')
# Typical albedo of each colour name (RGB); every object gets a jittered copy.
COLOUR_RGB = {
    'red': (200, 32, 36),
    'green': (44, 158, 64),
    'blue': (38, 72, 200),
    'yellow': (232, 200, 44),
}
# Phrasings of an object kind; the first is the canonical one.
PHRASINGS = (
    '{colour} {shape}',
    'the {colour} {shape}',
    'a {colour} {shape}',
    'a photo of a {colour} {shape}',
    '{colour} {shape} on the table',
)
# Table albedos: woods, greys, white, beige, slate; all far less saturated than the objects.
TABLE_RGB = (
    (188, 148, 104), (122, 84, 56), (142, 141, 138), (224, 222, 215),
    (64, 66, 70), (200, 186, 160), (108, 118, 132), (98, 110, 100),
)
TABLE_TEXTURES = ('wood', 'blotches', 'tiles', 'speckle')
# A depth reading farther than this is dropped (0), as a structured-light sensor's range ends.
MAX_DEPTH_M = 3.0
MAX_OBJECTS = 5


@dataclass(frozen=True)
class Intrinsics(CameraModel):
    """The node's pinhole camera model, with what rendering a scene needs besides."""

    def matrix(self) -> np.ndarray:
        """Return the 3x3 camera matrix K (as in sensor_msgs/CameraInfo ``k``)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Return the (N, 2) pixel coordinates (u, v) of (N, 3) camera-frame points."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.stack([self.fx * points[:, 0] / points[:, 2] + self.cx,
                         self.fy * points[:, 1] / points[:, 2] + self.cy], axis=1)

    def back_project(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the (N, 3) camera-frame points of pixels (u, v) at depths z (metres)."""
        u, v, z = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (u, v, z))
        return np.stack([(u - self.cx) / self.fx * z, (v - self.cy) / self.fy * z, z], axis=1)


@dataclass
class SceneObject:
    """
    One object of a scene with its ground truth.

    ``mask`` is the visible part (H x W bool); ``full_mask`` is the silhouette the object would
    have with no other object in front of it (both cut to the frame). ``centroid_3d`` is the
    mean of the visible surface points (what back-projecting the mask with a perfect depth
    image gives); ``center_3d`` is the centre of the solid. Both are in the camera optical
    frame, metres.
    """

    shape: str
    colour: str
    mask: np.ndarray
    full_mask: np.ndarray
    centroid_3d: np.ndarray
    center_3d: np.ndarray
    size_m: float
    height_m: float
    yaw: float
    albedo: tuple[int, int, int]

    @property
    def kind(self) -> tuple[str, str]:
        """Return (shape, colour)."""
        return self.shape, self.colour

    @property
    def pixel_count(self) -> int:
        """Return the number of visible pixels."""
        return int(self.mask.sum())

    @property
    def visible_fraction(self) -> float:
        """Return the visible share of the object's unoccluded in-frame silhouette."""
        full = int(self.full_mask.sum())
        return self.pixel_count / full if full else 0.0

    @property
    def occluded(self) -> bool:
        """Return whether another object hides part of this one."""
        return bool((self.full_mask & ~self.mask).any())


@dataclass
class Scene:
    """
    A rendered scene: image, depth, camera, table plane and objects.

    The table is the plane ``table_normal . X + table_offset = 0`` (camera frame, metres), the
    normal pointing up, towards the camera. ``depth_m`` is z in metres, 0 where the sensor
    gives no reading.
    """

    seed: int
    rgb: np.ndarray
    depth_m: np.ndarray
    intrinsics: Intrinsics
    table_normal: np.ndarray
    table_offset: float
    objects: list[SceneObject] = field(default_factory=list)
    # The noise-free depth the sensor model started from (metres, 0 where no surface): ground
    # truth for 3D estimates made from ``depth_m``.
    depth_exact_m: np.ndarray | None = None

    def depth_mm(self) -> np.ndarray:
        """Return the depth image as 16UC1 millimetres (see :func:`depth_to_millimetres`)."""
        return depth_to_millimetres(self.depth_m)

    def kinds(self) -> set[tuple[str, str]]:
        """Return the (shape, colour) kinds present."""
        return {obj.kind for obj in self.objects}

    def label_image(self) -> np.ndarray:
        """Return (H, W) uint8: 0 = table, k = ``objects[k - 1]``."""
        labels = np.zeros(self.depth_m.shape, dtype=np.uint8)
        for index, obj in enumerate(self.objects):
            labels[obj.mask] = index + 1
        return labels

    def mask_of(self, shape: str, colour: str) -> np.ndarray:
        """Return the visible mask of every object of a kind (all False when absent)."""
        mask = np.zeros(self.depth_m.shape, dtype=bool)
        for obj in self.objects:
            if obj.kind == (shape, colour):
                mask |= obj.mask
        return mask


def depth_to_millimetres(depth_m: np.ndarray) -> np.ndarray:
    """Convert float metres to uint16 millimetres (ROS 16UC1); 0 stays 0, far values saturate."""
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0)
    return np.clip(np.rint(depth * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def phrase(item: 'SceneObject | tuple[str, str]',
           rng: np.random.Generator | None = None) -> str:
    """
    Return a phrase naming an object or a (shape, colour) kind: 'red circle', 'the red circle'.

    Without ``rng`` the canonical phrasing ('red circle'); with one, a random phrasing.
    """
    shape, colour = item.kind if isinstance(item, SceneObject) else item
    template = PHRASINGS[0] if rng is None else PHRASINGS[int(rng.integers(len(PHRASINGS)))]
    return template.format(colour=colour, shape=shape)


def all_kinds(shapes: Sequence[str] = SHAPES,
              colours: Sequence[str] = COLOURS) -> list[tuple[str, str]]:
    """Return every (shape, colour) pair, shapes outermost."""
    return [(shape, colour) for shape in shapes for colour in colours]


# ---------------------------------------------------------------------------- geometry
