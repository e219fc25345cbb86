"""
The ray caster and shading behind :func:`clipseg_ros.tools.scenes.render_scene`: table, prisms,
textures, placement, depth and shadows. numpy + OpenCV.
"""

import colorsys
from dataclasses import dataclass
import math
from typing import Iterable, Sequence

import cv2
import numpy as np

from clipseg_ros.tools.scene_model import (
    all_kinds, COLOUR_RGB, COLOURS, Intrinsics, SHAPES, TABLE_RGB, TABLE_TEXTURES)


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


def random_table(rng: np.random.Generator) -> _Table:
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


def table_albedo(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


def object_albedo(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    red, green, blue = (v / 255.0 for v in COLOUR_RGB[colour])
    hue, saturation, value = colorsys.rgb_to_hsv(red, green, blue)
    hue = (hue + rng.uniform(-0.02, 0.02)) % 1.0
    saturation = min(1.0, saturation * rng.uniform(0.75, 1.05))
    value = min(1.0, value * rng.uniform(0.8, 1.05))
    return tuple(int(round(255.0 * v)) for v in colorsys.hsv_to_rgb(hue, saturation, value))


# ---------------------------------------------------------------------------- scene


@dataclass
class Placed:
    """One object as placed on the table (tools.scene_sequences builds them too)."""

    shape: str
    colour: str
    size: float
    height: float
    yaw: float
    centre: np.ndarray  # table coordinates of the footprint centre


def pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    u = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    rays = np.empty((intrinsics.height, intrinsics.width, 3))
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    rays[..., 2] = 1.0
    return rays


def table_point_at(table: _Table, intrinsics: Intrinsics, u: float, v: float) -> np.ndarray:
    ray = np.array([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy,
                    1.0])
    return table.coords(ray * (-table.height / (table.up @ ray)))


def place(rng: np.random.Generator, table: _Table, intrinsics: Intrinsics,
          kinds: list[tuple[str, str]]) -> list[Placed]:
    """Put the objects on the table without overlapping; some touch to make occlusions."""
    placed: list[Placed] = []
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
                centre = table_point_at(table, intrinsics, u, v)
            pixel = intrinsics.project(table.point(centre))[0]
            if not (0.06 * intrinsics.width <= pixel[0] <= 0.94 * intrinsics.width
                    and 0.08 * intrinsics.height <= pixel[1] <= 0.94 * intrinsics.height):
                continue
            if all(np.linalg.norm(centre - p.centre)
                   >= radius + _bounding_radius(p.shape, p.size) + 0.001 for p in placed):
                placed.append(Placed(shape, colour, size, height, rng.uniform(0, 2 * np.pi),
                                     centre))
                break
    return placed


def render_depths(table: _Table, intrinsics: Intrinsics, rays: np.ndarray,
                  placed: list[Placed]) -> tuple[np.ndarray, np.ndarray, list]:
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


def shadow_mask(table: _Table, intrinsics: Intrinsics, placed: list[Placed],
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


def random_intrinsics(rng: np.random.Generator, width: int, height: int) -> Intrinsics:
    hfov = math.radians(rng.uniform(55.0, 68.0))
    focal = 0.5 * width / math.tan(0.5 * hfov)
    return Intrinsics(width=width, height=height, fx=focal, fy=focal * rng.uniform(0.995, 1.005),
                      cx=0.5 * (width - 1) + rng.normal(0.0, 0.01 * width),
                      cy=0.5 * (height - 1) + rng.normal(0.0, 0.01 * height))


def choose_kinds(rng: np.random.Generator, count: int, shapes: Sequence[str],
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
