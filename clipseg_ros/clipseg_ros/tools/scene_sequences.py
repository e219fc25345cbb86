"""
Scenes with several objects of one kind and sequences of frames, with ground truth per frame:
each object's mask, 3D centroid and identity. numpy + OpenCV only, seeded.

Objects are given by where their footprint centre appears in the first frame (fractions of the
image width and height, on the table) and a velocity on the table; the camera may drift. Each
frame is a :class:`Scene` of :func:`render_scene` (same table, light and camera intrinsics,
fresh sensor noise), so every object's ``mask`` and ``centroid_3d`` are exact for that frame.

Typical use::

    frames = passing_pair(seed=3)             # two red circles crossing, 60 frames
    for frame in frames:
        frame.scene.rgb, frame.scene.depth_m  # the images
        frame.identities[k]                   # identity of frame.scene.objects[k]
"""

from dataclasses import dataclass, replace
from typing import Sequence

from clipseg_ros.tools.scene_model import Scene
from clipseg_ros.tools.scene_render import Placed, table_point_at
from clipseg_ros.tools.scenes import render_scene
import numpy as np

FRAME_PERIOD_S = 1.0 / 15.0


@dataclass(frozen=True)
class Solid:
    """One object of a layout: its kind, its start in the image, its motion on the table."""

    identity: int
    shape: str
    colour: str
    at: tuple[float, float]            # footprint centre in frame 0: (u, v) / (width, height)
    size: float = 0.05                 # about the footprint's radius, metres
    height: float = 0.06
    yaw: float = 0.0
    velocity: tuple[float, float] = (0.0, 0.0)   # table metres per frame
    hidden: range = range(0)           # frames where it is out of the scene (hidden)
    # Changes of velocity: (from frame, velocity) pairs, in order; before the first, velocity.
    moves: tuple[tuple[int, tuple[float, float]], ...] = ()

    def offset(self, frame: int) -> np.ndarray:
        """Table metres moved from frame 0 to ``frame``."""
        starts = [0] + [start for start, _ in self.moves]
        velocities = [self.velocity] + [velocity for _, velocity in self.moves]
        ends = starts[1:] + [max(frame, starts[-1])]
        moved = np.zeros(2)
        for start, end, velocity in zip(starts, ends, velocities):
            moved += np.asarray(velocity, float) * max(0, min(frame, end) - start)
        return moved


@dataclass
class SequenceFrame:
    """One frame of a sequence: the scene, its stamp, and the identity of each object."""

    index: int
    stamp: float
    scene: Scene
    identities: list[int]

    def object(self, identity: int):
        """The scene object of an identity, or None when it is hidden in this frame."""
        for scene_object, known in zip(self.scene.objects, self.identities):
            if known == identity:
                return scene_object
        return None


def _table_at(table, distance: float | None, drift: np.ndarray):
    """The table moved so the optical axis meets it ``distance`` away, then by ``drift``."""
    origin = table.origin if distance is None else np.array([0.0, 0.0, distance])
    origin = origin + drift
    return replace(table, origin=origin, height=float(-(table.up @ origin)))


def render_layout(seed: int, solids: Sequence[Solid], width: int = 640, height: int = 480, *,
                  frame: int = 0, distance: float | None = None,
                  camera_drift: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  camera_path=None) -> SequenceFrame:
    """
    Render the objects of ``solids`` that are not hidden in ``frame``.

    ``distance``: metres from the camera to the table along the optical axis (None: the seed's
    table); ``camera_drift``: metres per frame the scene moves in the camera frame (the camera
    moving the other way); ``camera_path(frame)``, where given, the (3,) metres the scene has
    moved by ``frame`` instead (a camera that pans and comes back).
    """
    shown = [solid for solid in solids if frame not in solid.hidden]

    def arrange(table, intrinsics):
        start = _table_at(table, distance, np.zeros(3))
        moved = (np.asarray(camera_drift, float) * frame if camera_path is None
                 else np.asarray(camera_path(frame), float))
        table = _table_at(table, distance, moved)
        placed = []
        for solid in shown:
            centre = table_point_at(start, intrinsics, solid.at[0] * intrinsics.width,
                                    solid.at[1] * intrinsics.height)
            centre = centre + solid.offset(frame)
            placed.append(Placed(solid.shape, solid.colour, solid.size, solid.height,
                                 solid.yaw, centre))
        return table, placed

    scene = render_scene(seed, width, height, arrange=arrange, frame=frame)
    return SequenceFrame(frame, frame * FRAME_PERIOD_S, scene, [s.identity for s in shown])


def sequence(seed: int, solids: Sequence[Solid], frames: int = 60, width: int = 320,
             height: int = 240, **options) -> list[SequenceFrame]:
    """``frames`` consecutive frames of a layout (see :func:`render_layout`)."""
    return [render_layout(seed, solids, width, height, frame=index, **options)
            for index in range(frames)]


# ---------------------------------------------------------------------------- ready-made


def several_of_a_kind(seed: int, count: int = 2, width: int = 640, height: int = 480,
                      distance: float = 1.0) -> SequenceFrame:
    """``count`` (2 or 3) red circles well apart, with a green square and a blue triangle."""
    spots = [(0.25, 0.45), (0.72, 0.4), (0.5, 0.75)][:count]
    solids = [Solid(k, 'circle', 'red', spot) for k, spot in enumerate(spots)]
    solids += [Solid(10, 'square', 'green', (0.5, 0.2), size=0.04),
               Solid(11, 'triangle', 'blue', (0.12, 0.8), size=0.04)]
    return render_layout(seed, solids, width, height, distance=distance)


def touching_pair(seed: int, width: int = 640, height: int = 480,
                  distance: float = 1.0) -> SequenceFrame:
    """
    Two red circles one behind the other: they touch in the image (the taller, nearer one
    hides the foot of the farther one) but stand 0.12 m apart on the table.
    """
    solids = [Solid(0, 'circle', 'red', (0.5, 0.7), size=0.05, height=0.16),
              Solid(1, 'circle', 'red', (0.5, 0.7), size=0.05, height=0.05)]
    frame = render_layout(seed, solids[:1], width, height, distance=distance)
    # Put the second one farther along the table, away from the camera.
    return _behind(seed, solids, frame, width, height, distance, 0.12)


def _behind(seed, solids, frame, width, height, distance, gap) -> SequenceFrame:
    scene = frame.scene
    near = scene.objects[0]
    towards = np.asarray(near.center_3d)
    away = towards / np.linalg.norm(towards)
    # Along the table, away from the camera: the view direction with its normal part removed.
    normal = scene.table_normal
    along = away - (away @ normal) * normal
    along /= np.linalg.norm(along)
    target = near.center_3d + gap * along
    pixel = scene.intrinsics.project(target - 0.5 * near.height_m * normal)[0]
    at = (float(pixel[0] / width), float(pixel[1] / height))
    moved = [solids[0], replace(solids[1], at=at)]
    return render_layout(seed, moved, width, height, distance=distance)


def moving_objects(seed: int, frames: int = 60, hidden: range = range(0)) -> list[SequenceFrame]:
    """
    Two red circles and a green square drifting a few millimetres per frame while the camera
    drifts too; circle 1 is hidden in the frames of ``hidden``.
    """
    solids = [Solid(0, 'circle', 'red', (0.3, 0.45), velocity=(0.0015, 0.0005)),
              Solid(1, 'circle', 'red', (0.7, 0.5), velocity=(-0.001, 0.001), hidden=hidden),
              Solid(2, 'square', 'green', (0.5, 0.8), size=0.04, velocity=(0.0, -0.001))]
    return sequence(seed, solids, frames, distance=0.6, camera_drift=(0.001, 0.0, 0.0005))


def passing_pair(seed: int, frames: int = 60) -> list[SequenceFrame]:
    """
    Two red circles crossing each other's path in the image: the nearer one moves right, the
    farther one, 0.12 m behind it, moves left; for a few frames the nearer one hides part of
    the farther one.
    """
    solids = [Solid(0, 'circle', 'red', (0.2, 0.68), size=0.035, height=0.12,
                    velocity=(0.006, 0.0)),
              Solid(1, 'circle', 'red', (0.8, 0.5), size=0.035, height=0.04,
                    velocity=(-0.006, 0.0))]
    return sequence(seed, solids, frames, distance=0.6)


__all__ = ['FRAME_PERIOD_S', 'SequenceFrame', 'Solid', 'moving_objects', 'passing_pair',
           'render_layout', 'sequence', 'several_of_a_kind', 'touching_pair']
