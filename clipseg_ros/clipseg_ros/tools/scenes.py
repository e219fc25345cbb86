"""
Synthetic tabletop scenes with exact ground truth (numpy + OpenCV only, seeded).

A pinhole camera looks down at a textured table, tilted and rolled a little, from a fixed
distance. On the table stand one to five coloured solids: cylinders ('circle'), square boxes
('square'), triangular prisms ('triangle') and star prisms ('star'), each with its own
footprint size, height and rotation. Everything is ray cast, so the RGB image, the depth image,
the per-object masks and the 3D positions agree exactly:

* every pixel's ray is intersected with the table plane and with each solid (a union of convex
  prisms); the nearest surface wins, which gives occlusion, the visible mask of each object and
  the depth image at once;
* the table carries a texture in its own plane coordinates (so it foreshortens correctly),
  objects are shaded by the angle between each face and a directional light, and cast soft
  shadows on the table; global gain, a light spot, vignetting, a colour tint, defocus blur and
  sensor noise vary per scene;
* depth is in metres along the optical axis (z), with a little range-dependent noise and the
  holes real sensors have (zero where out of range, random dropouts, blobs, and pixels on depth
  edges).

Coordinates are those of a ROS camera optical frame: x right, y down, z forward, metres; pixel
(column u, row v) has its centre at (u, v), so ``u = fx * x / z + cx`` for a pixel centre.

Typical use::

    scene = render_scene(seed=7, width=640, height=480)
    scene.rgb             # (480, 640, 3) uint8
    scene.depth_m         # (480, 640) float32, 0 = no reading
    scene.depth_mm()      # (480, 640) uint16, as a 16UC1 depth image
    scene.objects[0].mask, scene.objects[0].centroid_3d, phrase(scene.objects[0], rng)
"""

import colorsys
from dataclasses import dataclass, field
import math
from typing import Iterable, Sequence

from clipseg_ros.depth_targets import CameraModel
import cv2
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


@dataclass
class _Table:
    up: np.ndarray       # unit normal, towards the camera
    height: float        # camera height above the plane (m)
    origin: np.ndarray   # where the optical axis meets the table
    e1: np.ndarray       # in-plane axes, (e1, e2, up) right-handed
    e2: np.ndarray

    def point(self, p: np.ndarray) -> np.ndarray:
        """Return the camera-frame points of (N, 2) table coordinates (at height 0)."""
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        return self.origin + p[:, :1] * self.e1 + p[:, 1:] * self.e2

    def coords(self, points: np.ndarray) -> np.ndarray:
        """Return the (..., 2) table coordinates of (..., 3) camera-frame points."""
        rel = points - self.origin
        return np.stack([rel @ self.e1, rel @ self.e2], axis=-1)


def _random_table(rng: np.random.Generator) -> _Table:
    pitch = math.radians(rng.uniform(42.0, 78.0))   # optical axis below the horizon
    roll = math.radians(rng.uniform(-6.0, 6.0))
    distance = rng.uniform(0.36, 0.58)               # along the optical axis
    up = np.array([0.0, -math.cos(pitch), -math.sin(pitch)])
    c, s = math.cos(roll), math.sin(roll)
    up = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ up
    origin = np.array([0.0, 0.0, distance])
    x_axis = np.array([1.0, 0.0, 0.0])
    e1 = x_axis - (x_axis @ up) * up
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    return _Table(up=up, height=float(-(up @ origin)), origin=origin, e1=e1, e2=e2)


def _outline(shape: str, size: float) -> list[np.ndarray]:
    """
    Return the footprint of a shape as convex polygons (counter-clockwise, table coordinates).

    ``size`` is about the footprint's radius; the shapes' areas are kept comparable.
    """
    def ring(count: int, radius: float, phase: float = 0.0) -> np.ndarray:
        angles = phase + 2.0 * np.pi * np.arange(count) / count
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape == 'circle':
        return [ring(48, size)]
    if shape == 'square':
        return [ring(4, size * 1.25, np.pi / 4)]
    if shape == 'triangle':
        return [ring(3, size * 1.45, np.pi / 2)]
    if shape == 'star':
        outer = ring(5, size * 1.45, np.pi / 2)
        inner = ring(5, size * 1.45 * 0.45, np.pi / 2 + np.pi / 5)
        spikes = [np.stack([inner[i - 1], outer[i], inner[i]]) for i in range(5)]
        return [inner] + spikes
    raise ValueError(f'unknown shape {shape!r}: expected one of {", ".join(SHAPES)}')


def _bounding_radius(shape: str, size: float) -> float:
    return float(max(np.linalg.norm(part, axis=1).max() for part in _outline(shape, size)))


@dataclass
class _Prism:
    planes: np.ndarray     # (F, 3) outward normals a: inside where a . X <= b
    offsets: np.ndarray    # (F,)
    corners: np.ndarray    # (2K, 3) base and top vertices


def _prisms(table: _Table, shape: str, size: float, height: float, yaw: float,
            centre: np.ndarray) -> list[_Prism]:
    """Return the convex prisms whose union is the solid, in camera coordinates."""
    c, s = math.cos(yaw), math.sin(yaw)
    rotation = np.array([[c, -s], [s, c]])
    prisms = []
    for part in _outline(shape, size):
        polygon = part @ rotation.T + centre
        base = table.point(polygon)
        top = base + height * table.up
        edges = np.roll(polygon, -1, axis=0) - polygon
        # Outward in-plane normal of each counter-clockwise edge: (dy, -dx).
        normals_2d = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
        normals_2d /= np.linalg.norm(normals_2d, axis=1, keepdims=True)
        normals = normals_2d[:, :1] * table.e1 + normals_2d[:, 1:] * table.e2
        offsets = np.einsum('ij,ij->i', normals, base)
        # Top face: up . X <= up . top; bottom face: -up . X <= -up . base.
        planes = np.vstack([table.up, -table.up, normals])
        offsets = np.concatenate([[table.up @ top[0], -(table.up @ base[0])], offsets])
        prisms.append(_Prism(planes, offsets, np.vstack([base, top])))
    return prisms


def _cast(rays: np.ndarray, prism: _Prism) -> tuple[np.ndarray, np.ndarray]:
    """
    Intersect rays (P, 3), with z = 1, with a convex prism from the camera at the origin.

    Returns the entry depth (inf where missed) and the index of the entry face.
    """
    denom = rays @ prism.planes.T
    with np.errstate(divide='ignore', invalid='ignore'):
        bound = prism.offsets / denom
    entering = denom < -1e-12
    leaving = denom > 1e-12
    lower = np.where(entering, bound, -np.inf)
    face = lower.argmax(axis=1)
    near = lower.max(axis=1)
    far = np.where(leaving, bound, np.inf).min(axis=1)
    # A ray parallel to a face plane and outside it never enters.
    blocked = (~entering & ~leaving & (prism.offsets < 0.0)).any(axis=1)
    hit = (near < far) & (near > 0.0) & ~blocked
    return np.where(hit, near, np.inf), face


# ---------------------------------------------------------------------------- appearance


def _value_noise(rng: np.random.Generator, a: np.ndarray, b: np.ndarray,
                 scale_m: float, grid: int = 64) -> np.ndarray:
    """Smooth noise in [0, 1] over table coordinates (a, b), features ``scale_m`` apart."""
    lattice = rng.random((grid, grid)).astype(np.float32)
    map_x = np.mod(a / scale_m, grid).astype(np.float32)
    map_y = np.mod(b / scale_m, grid).astype(np.float32)
    noise = cv2.remap(lattice, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP)
    return np.clip(noise, 0.0, 1.0)


def _table_albedo(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (H, W, 3) float32 table albedo in [0, 1] at table coordinates (a, b)."""
    base = np.array(TABLE_RGB[int(rng.integers(len(TABLE_RGB)))], dtype=np.float32)
    base = np.clip(base + rng.normal(0.0, 8.0, 3), 0, 255) / 255.0
    kind = TABLE_TEXTURES[int(rng.integers(len(TABLE_TEXTURES)))]
    angle = rng.uniform(0.0, np.pi)
    along = a * math.cos(angle) + b * math.sin(angle)
    across = -a * math.sin(angle) + b * math.cos(angle)
    blotch = _value_noise(rng, a, b, rng.uniform(0.08, 0.3)) - 0.5
    if kind == 'wood':
        warp = _value_noise(rng, along * 0.2, across, 0.02) - 0.5
        period = rng.uniform(0.004, 0.012)
        grain = np.sin(2.0 * np.pi * (across / period + 3.0 * warp))
        plank = rng.uniform(0.08, 0.2)
        seam = np.abs(np.mod(across / plank, 1.0) - 0.5) > 0.49
        shade = 1.0 + 0.12 * grain + 0.25 * blotch - 0.35 * seam
    elif kind == 'tiles':
        tile = rng.uniform(0.06, 0.2)
        cells = np.floor(along / tile) * 7919.0 + np.floor(across / tile) * 104729.0
        jitter = (np.sin(cells) * 43758.5453) % 1.0 - 0.5
        grout = ((np.abs(np.mod(along / tile, 1.0) - 0.5) > 0.47)
                 | (np.abs(np.mod(across / tile, 1.0) - 0.5) > 0.47))
        shade = 1.0 + 0.12 * jitter + 0.15 * blotch - 0.4 * grout
    elif kind == 'speckle':
        fine = _value_noise(rng, a, b, rng.uniform(0.002, 0.005)) - 0.5
        shade = 1.0 + 0.35 * fine + 0.2 * blotch
    else:
        detail = _value_noise(rng, a, b, rng.uniform(0.02, 0.05)) - 0.5
        shade = 1.0 + 0.45 * blotch + 0.2 * detail
    return np.clip(shade[..., None] * base, 0.0, 1.0).astype(np.float32)


def _object_albedo(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    red, green, blue = (v / 255.0 for v in COLOUR_RGB[colour])
    hue, saturation, value = colorsys.rgb_to_hsv(red, green, blue)
    hue = (hue + rng.uniform(-0.02, 0.02)) % 1.0
    saturation = min(1.0, saturation * rng.uniform(0.75, 1.05))
    value = min(1.0, value * rng.uniform(0.8, 1.05))
    return tuple(int(round(255.0 * v)) for v in colorsys.hsv_to_rgb(hue, saturation, value))


# ---------------------------------------------------------------------------- scene


@dataclass
class _Placed:
    shape: str
    colour: str
    size: float
    height: float
    yaw: float
    centre: np.ndarray  # table coordinates of the footprint centre


def _pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    u = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    rays = np.empty((intrinsics.height, intrinsics.width, 3))
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    rays[..., 2] = 1.0
    return rays


def _table_point_at(table: _Table, intrinsics: Intrinsics, u: float, v: float) -> np.ndarray:
    ray = np.array([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy,
                    1.0])
    return table.coords(ray * (-table.height / (table.up @ ray)))


def _place(rng: np.random.Generator, table: _Table, intrinsics: Intrinsics,
           kinds: list[tuple[str, str]]) -> list[_Placed]:
    """Put the objects on the table without overlapping; some touch to make occlusions."""
    placed: list[_Placed] = []
    # Where the camera stands over the table: neighbours placed on that side of an object hide
    # part of it.
    foot = table.coords(-table.height * table.up)
    for shape, colour in kinds:
        size = rng.uniform(0.040, 0.072)
        height = size * rng.uniform(0.3, 2.0)
        radius = _bounding_radius(shape, size)
        for _ in range(60):
            if placed and rng.random() < 0.5:
                other = placed[int(rng.integers(len(placed)))]
                towards = foot - other.centre
                direction = math.atan2(towards[1], towards[0])
                if rng.random() < 0.3:
                    direction = rng.uniform(0.0, 2.0 * np.pi)
                else:
                    direction += rng.uniform(-0.8, 0.8)
                gap = (_bounding_radius(other.shape, other.size) + radius
                       + rng.uniform(0.001, 0.012))
                centre = other.centre + gap * np.array([math.cos(direction),
                                                        math.sin(direction)])
            else:
                u = rng.uniform(0.12, 0.88) * intrinsics.width
                v = rng.uniform(0.15, 0.88) * intrinsics.height
                centre = _table_point_at(table, intrinsics, u, v)
            pixel = intrinsics.project(table.point(centre))[0]
            if not (0.06 * intrinsics.width <= pixel[0] <= 0.94 * intrinsics.width
                    and 0.08 * intrinsics.height <= pixel[1] <= 0.94 * intrinsics.height):
                continue
            if all(np.linalg.norm(centre - p.centre)
                   >= radius + _bounding_radius(p.shape, p.size) + 0.001 for p in placed):
                placed.append(_Placed(shape, colour, size, height, rng.uniform(0, 2 * np.pi),
                                      centre))
                break
    return placed


def _render_depths(table: _Table, intrinsics: Intrinsics, rays: np.ndarray,
                   placed: list[_Placed]) -> tuple[np.ndarray, np.ndarray, list]:
    """
    Cast every object: per-object depth maps over the frame (inf = miss) and entry normals.

    Returns the table depth (H, W), a list of per-object (depth, normal) full-frame arrays.
    """
    height, width = rays.shape[:2]
    with np.errstate(divide='ignore'):
        table_depth = -table.height / (rays @ table.up)
    table_depth[~np.isfinite(table_depth) | (table_depth <= 0.0)] = np.inf
    per_object = []
    for item in placed:
        depth = np.full((height, width), np.inf)
        normal = np.zeros((height, width, 3))
        for prism in _prisms(table, item.shape, item.size, item.height, item.yaw, item.centre):
            corners = intrinsics.project(prism.corners)
            u0, v0 = np.floor(corners.min(axis=0)).astype(int) - 1
            u1, v1 = np.ceil(corners.max(axis=0)).astype(int) + 2
            u0, v0 = max(u0, 0), max(v0, 0)
            u1, v1 = min(u1, width), min(v1, height)
            if u0 >= u1 or v0 >= v1:
                continue
            box = rays[v0:v1, u0:u1].reshape(-1, 3)
            hit, face = _cast(box, prism)
            hit = hit.reshape(v1 - v0, u1 - u0)
            closer = hit < depth[v0:v1, u0:u1]
            depth[v0:v1, u0:u1][closer] = hit[closer]
            normal[v0:v1, u0:u1][closer] = prism.planes[face.reshape(hit.shape)][closer]
        per_object.append((depth, normal))
    return table_depth, per_object


def _shadow_mask(table: _Table, intrinsics: Intrinsics, placed: list[_Placed],
                 light: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 soft shadow of all objects on the table, in [0, 1]."""
    shadow = np.zeros((intrinsics.height, intrinsics.width), dtype=np.uint8)
    horizontal = np.array([light @ table.e1, light @ table.e2])
    vertical = light @ table.up
    for item in placed:
        for prism in _prisms(table, item.shape, item.size, item.height, item.yaw, item.centre):
            base = table.coords(prism.corners[:len(prism.corners) // 2])
            cast = base - item.height * horizontal / vertical
            hull = cv2.convexHull(np.vstack([base, cast]).astype(np.float32)).reshape(-1, 2)
            points = table.point(hull)
            if (points[:, 2] < 0.05).any():
                continue
            pixels = np.round(intrinsics.project(points) * 4.0).astype(np.int32)
            cv2.fillPoly(shadow, [pixels], 255, lineType=cv2.LINE_AA, shift=2)
    sigma = max(0.5, 0.006 * intrinsics.width)
    return cv2.GaussianBlur(shadow.astype(np.float32) / 255.0, (0, 0), sigma)


def _random_intrinsics(rng: np.random.Generator, width: int, height: int) -> Intrinsics:
    hfov = math.radians(rng.uniform(55.0, 68.0))
    focal = 0.5 * width / math.tan(0.5 * hfov)
    return Intrinsics(width=width, height=height, fx=focal, fy=focal * rng.uniform(0.995, 1.005),
                      cx=0.5 * (width - 1) + rng.normal(0.0, 0.01 * width),
                      cy=0.5 * (height - 1) + rng.normal(0.0, 0.01 * height))


def _choose_kinds(rng: np.random.Generator, count: int, shapes: Sequence[str],
                  colours: Sequence[str],
                  include: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    chosen = list(dict.fromkeys(tuple(kind) for kind in include))
    for shape, colour in chosen:
        if shape not in SHAPES or colour not in COLOURS:
            raise ValueError(f'unknown kind {(shape, colour)!r}')
    rest = [kind for kind in all_kinds(shapes, colours) if kind not in chosen]
    extra = max(0, min(count - len(chosen), len(rest)))
    picks = rng.choice(len(rest), size=extra, replace=False) if extra else []
    return chosen + [rest[int(i)] for i in picks]


def render_scene(seed: int, width: int = 640, height: int = 480, *,
                 num_objects: int | None = None, shapes: Sequence[str] = SHAPES,
                 colours: Sequence[str] = COLOURS,
                 include: Iterable[tuple[str, str]] = (),
                 min_visible_fraction: float = 0.35) -> Scene:
    """
    Render a tabletop scene; the same arguments always give the same scene.

    Parameters
    ----------
    seed
        Seed of everything random in the scene.
    width, height
        Frame size in pixels (any size from 32 x 32); objects scale with the frame.
    num_objects
        1 to 5; random (uniform) when None. Kinds (shape, colour) are distinct within a scene.
        Fewer objects result when they do not fit on the visible table.
    shapes, colours
        The kinds to draw from (subsets of :data:`SHAPES` and :data:`COLOURS`).
    include
        (shape, colour) kinds the scene must contain (they count towards ``num_objects``).
    min_visible_fraction
        An object hidden more than this by others is moved, or left out after several tries;
        included kinds are never left out (their visibility can then be lower).

    """
    if width < 32 or height < 32:
        raise ValueError(f'frame must be at least 32 x 32 pixels, got {width} x {height}')
    rng = np.random.default_rng(seed)
    include = list(include)
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else int(num_objects)
    if not 1 <= count <= MAX_OBJECTS:
        raise ValueError(f'num_objects must be 1 to {MAX_OBJECTS}, got {num_objects}')
    count = max(count, len(include))
    intrinsics = _random_intrinsics(rng, int(width), int(height))
    table = _random_table(rng)
    rays = _pixel_rays(intrinsics)
    kinds = _choose_kinds(rng, count, shapes, colours, include)

    for attempt in range(6):
        placed = _place(rng, table, intrinsics, kinds)
        table_depth, per_object = _render_depths(table, intrinsics, rays, placed)
        depths = np.stack([table_depth] + [d for d, _ in per_object])
        owner = depths.argmin(axis=0) - 1           # -1 = table
        visible = [owner == i for i in range(len(placed))]
        full = [np.isfinite(d) for d, _ in per_object]
        fraction = [v.sum() / max(1, f.sum()) for v, f in zip(visible, full)]
        minimum = max(4, int(2e-4 * width * height))
        bad = [i for i, item in enumerate(placed)
               if fraction[i] < min_visible_fraction or visible[i].sum() < minimum]
        missing_included = any((k not in [(p.shape, p.colour) for p in placed]) for k in include)
        if not bad and not missing_included:
            break
        if attempt == 5:
            keep = [i for i, item in enumerate(placed)
                    if i not in bad or (item.shape, item.colour) in include]
            placed = [placed[i] for i in keep]
            per_object = [per_object[i] for i in keep]
            depths = np.stack([table_depth] + [d for d, _ in per_object])
            owner = depths.argmin(axis=0) - 1
            visible = [owner == i for i in range(len(placed))]
            full = [np.isfinite(d) for d, _ in per_object]
    depth_true = depths.min(axis=0)

    # ---- appearance
    points = rays * np.where(np.isfinite(depth_true), depth_true, 0.0)[..., None]
    plane = table.coords(points)
    albedo = _table_albedo(rng, plane[..., 0], plane[..., 1])
    elevation = math.radians(rng.uniform(35.0, 80.0))
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    light = (math.cos(elevation) * (math.cos(azimuth) * table.e1 + math.sin(azimuth) * table.e2)
             + math.sin(elevation) * table.up)
    ambient = rng.uniform(0.35, 0.55)
    shading = np.full(depth_true.shape, ambient + (1.0 - ambient) * (light @ table.up),
                      dtype=np.float32)
    shadow = _shadow_mask(table, intrinsics, placed, light)
    table_pixels = owner < 0
    shading[table_pixels] *= 1.0 - rng.uniform(0.3, 0.55) * shadow[table_pixels]
    objects = []
    for index, (item, (_, normal)) in enumerate(zip(placed, per_object)):
        mask = visible[index]
        colour = _object_albedo(rng, item.colour)
        lit = np.clip(normal[mask] @ light, 0.0, None)
        albedo[mask] = np.array(colour, dtype=np.float32) / 255.0
        shading[mask] = ambient + (1.0 - ambient) * lit
        centroid = points[mask].mean(axis=0)
        centre = table.point(item.centre)[0] + 0.5 * item.height * table.up
        objects.append(SceneObject(
            shape=item.shape, colour=item.colour, mask=mask, full_mask=full[index],
            centroid_3d=centroid, center_3d=centre, size_m=float(item.size),
            height_m=float(item.height), yaw=float(item.yaw), albedo=colour))
    # Light spot on the table, vignetting, colour tint and exposure.
    spot = table.coords(table.point(_table_point_at(
        table, intrinsics, rng.uniform(0, width), rng.uniform(0, height))))[0]
    spot_sigma = rng.uniform(0.12, 0.45)
    distance2 = ((plane - spot) ** 2).sum(axis=-1)
    lighting = 1.0 + rng.uniform(0.0, 0.45) * np.exp(-distance2 / (2.0 * spot_sigma ** 2))
    yy, xx = np.mgrid[0:height, 0:width]
    radius2 = ((xx - intrinsics.cx) / width) ** 2 + ((yy - intrinsics.cy) / width) ** 2
    lighting *= 1.0 - rng.uniform(0.0, 0.9) * radius2
    tint = (1.0 + rng.normal(0.0, 0.04, 3)).astype(np.float32)
    gain = rng.uniform(0.8, 1.2)
    image = albedo * (shading * lighting * gain)[..., None].astype(np.float32) * tint * 255.0
    # Soft highlight roll-off on the brightest channel, keeping hue: hard per-channel clipping
    # would turn bright wood into saturated orange or yellow, the objects' colours.
    peak = image.max(axis=2, keepdims=True)
    knee = np.float32(225.0)
    over = peak > knee
    image = np.where(over, image * ((knee + (peak - knee) * 0.3) / np.maximum(peak, 1.0)), image)
    # Defocus, then sensor noise; blur scales with the frame so that every size looks alike.
    blur = rng.uniform(0.2, 1.0) * width / 640.0
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), blur)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(
        rng.uniform(1.0, 6.0))
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    depth = _sensor_depth(rng, depth_true, owner)
    exact = np.where(np.isfinite(depth_true), depth_true, 0.0).astype(np.float32)
    return Scene(seed=int(seed), rgb=rgb, depth_m=depth, intrinsics=intrinsics,
                 table_normal=table.up.copy(), table_offset=table.height, objects=objects,
                 depth_exact_m=exact)


def _sensor_depth(rng: np.random.Generator, depth_true: np.ndarray,
                  owner: np.ndarray) -> np.ndarray:
    """Return float32 depth with range-dependent noise and zeros where a sensor gives none."""
    height, width = depth_true.shape
    depth = depth_true + rng.normal(0.0, 1.0, depth_true.shape) * 0.001 * depth_true ** 2
    missing = ~np.isfinite(depth_true) | (depth_true > MAX_DEPTH_M)
    missing |= rng.random(depth_true.shape) < rng.uniform(0.002, 0.02)
    # Depth edges: a stereo or ToF sensor mixes both surfaces there and drops most of them.
    finite = np.where(np.isfinite(depth_true), depth_true, MAX_DEPTH_M * 2.0)
    edge = np.zeros(depth_true.shape, dtype=bool)
    edge[:, 1:] |= np.abs(np.diff(finite, axis=1)) > 0.01
    edge[:, :-1] |= np.abs(np.diff(finite, axis=1)) > 0.01
    edge[1:] |= np.abs(np.diff(finite, axis=0)) > 0.01
    edge[:-1] |= np.abs(np.diff(finite, axis=0)) > 0.01
    missing |= edge & (rng.random(depth_true.shape) < 0.6)
    # A few blobs (dark or shiny patches), at least one so every scene has some.
    blobs = np.zeros(depth_true.shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = (max(1, int(rng.uniform(0.01, 0.04) * width)),
                max(1, int(rng.uniform(0.01, 0.03) * width)))
        cv2.ellipse(blobs, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    missing |= blobs.astype(bool)
    return np.where(missing, 0.0, depth).astype(np.float32)


__all__ = [
    'COLOURS', 'COLOUR_RGB', 'Intrinsics', 'MAX_DEPTH_M', 'PHRASINGS', 'SHAPES', 'Scene',
    'SceneObject', 'all_kinds', 'depth_to_millimetres', 'phrase', 'render_scene',
]
