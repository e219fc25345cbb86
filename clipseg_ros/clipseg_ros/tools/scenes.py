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

import math
from typing import Callable, Iterable, Sequence

# The scenes' public vocabulary is re-exported here, beside render_scene.
from clipseg_ros.tools.scene_model import (  # noqa: F401
    all_kinds, COLOUR_RGB, COLOURS, depth_to_millimetres, Intrinsics, MAX_DEPTH_M, MAX_OBJECTS,
    phrase, PHRASINGS, Scene, SceneObject, SHAPES)
from clipseg_ros.tools.scene_render import (
    choose_kinds, object_albedo, pixel_rays, place, random_intrinsics, random_table,
    render_depths, shadow_mask, table_albedo, table_point_at)
import cv2
import numpy as np


def render_scene(seed: int, width: int = 640, height: int = 480, *,
                 num_objects: int | None = None, shapes: Sequence[str] = SHAPES,
                 colours: Sequence[str] = COLOURS,
                 include: Iterable[tuple[str, str]] = (),
                 min_visible_fraction: float = 0.35,
                 arrange: Callable | None = None, frame: int = 0) -> Scene:
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
    arrange
        ``arrange(table, intrinsics) -> (table, placed)`` puts given objects on a given table
        instead of the random placement (tools.scene_sequences); they are kept as placed.
    frame
        Frame of a sequence: the sensor noise is drawn afresh per frame, the rest stays.

    """
    if width < 32 or height < 32:
        raise ValueError(f'frame must be at least 32 x 32 pixels, got {width} x {height}')
    rng = np.random.default_rng(seed)
    include = list(include)
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else int(num_objects)
    if not 1 <= count <= MAX_OBJECTS:
        raise ValueError(f'num_objects must be 1 to {MAX_OBJECTS}, got {num_objects}')
    count = max(count, len(include))
    intrinsics = random_intrinsics(rng, int(width), int(height))
    table = random_table(rng)
    rays = pixel_rays(intrinsics)
    kinds = choose_kinds(rng, count, shapes, colours, include)

    for attempt in range(6):
        if arrange is not None:
            table, placed = arrange(table, intrinsics)
        else:
            placed = place(rng, table, intrinsics, kinds)
        table_depth, per_object = render_depths(table, intrinsics, rays, placed)
        depths = np.stack([table_depth] + [d for d, _ in per_object])
        owner = depths.argmin(axis=0) - 1           # -1 = table
        visible = [owner == i for i in range(len(placed))]
        full = [np.isfinite(d) for d, _ in per_object]
        fraction = [v.sum() / max(1, f.sum()) for v, f in zip(visible, full)]
        minimum = max(4, int(2e-4 * width * height))
        bad = [i for i, item in enumerate(placed)
               if fraction[i] < min_visible_fraction or visible[i].sum() < minimum]
        missing_included = any((k not in [(p.shape, p.colour) for p in placed]) for k in include)
        if arrange is not None or (not bad and not missing_included):
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
    albedo = table_albedo(rng, plane[..., 0], plane[..., 1])
    elevation = math.radians(rng.uniform(35.0, 80.0))
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    light = (math.cos(elevation) * (math.cos(azimuth) * table.e1 + math.sin(azimuth) * table.e2)
             + math.sin(elevation) * table.up)
    ambient = rng.uniform(0.35, 0.55)
    shading = np.full(depth_true.shape, ambient + (1.0 - ambient) * (light @ table.up),
                      dtype=np.float32)
    shadow = shadow_mask(table, intrinsics, placed, light)
    table_pixels = owner < 0
    shading[table_pixels] *= 1.0 - rng.uniform(0.3, 0.55) * shadow[table_pixels]
    objects = []
    for index, (item, (_, normal)) in enumerate(zip(placed, per_object)):
        mask = visible[index]
        colour = object_albedo(rng, item.colour)
        lit = np.clip(normal[mask] @ light, 0.0, None)
        albedo[mask] = np.array(colour, dtype=np.float32) / 255.0
        shading[mask] = ambient + (1.0 - ambient) * lit
        centroid = points[mask].mean(axis=0) if mask.any() else np.full(3, np.nan)
        centre = table.point(item.centre)[0] + 0.5 * item.height * table.up
        objects.append(SceneObject(
            shape=item.shape, colour=item.colour, mask=mask, full_mask=full[index],
            centroid_3d=centroid, center_3d=centre, size_m=float(item.size),
            height_m=float(item.height), yaw=float(item.yaw), albedo=colour))
    # Light spot on the table, vignetting, colour tint and exposure.
    spot = table.coords(table.point(table_point_at(
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
    if frame:
        rng = np.random.default_rng([int(seed), int(frame)])
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
