"""
Teaching by pointing: ~/teach, ~/forget and the clicks of rqt_image_view (or rviz).

A click (``image_mouse_left`` of a camera, geometry_msgs/PointStamped) or a ~/teach request
names a pixel; the object under it in the camera's newest segmented frame
(core/teach_region.py: the instance there, else the depth surface, else a colour region)
becomes a support-image prompt made exactly as ~/set_image_prompt makes one. The node keeps,
per camera, that frame's image, instances and paired depth (segmented_frames.py: references,
no copies).
"""

from collections.abc import Callable
from dataclasses import dataclass
import math
import threading
from typing import Any

from clipseg_ros import conversions
from clipseg_ros.camera_names import served_camera
from clipseg_ros.core.teach_region import object_under_pixel, TaughtRegion
from clipseg_ros.parameters import MAX_PROMPT_CHARACTERS
from clipseg_ros.prompt_services import always_answers, PromptBook, support_prompt
from clipseg_ros.segmented_frames import SegmentedFrame, SegmentedFrames
import numpy as np


@dataclass
class TeachContext:
    """What teaching reads from the node, at the moment of each request or click."""

    engine: Callable[[], Any]
    engine_error: Callable[[], str]
    parameter: Callable[[str], Any]
    cameras: Callable[[], list[str]]
    active: Callable[[], bool]
    log_info: Callable[[str], None]
    log_warning: Callable[[str], None]
    log_error: Callable[[str], None]


@dataclass
class Taught:
    """What one teach did."""

    label: str
    version: int
    region: TaughtRegion
    header: Any


def click_pixel(msg, frame: SegmentedFrame) -> tuple[float, float]:
    """
    The pixel a PointStamped names: rqt_image_view's (z = 0: x column, y row), or a 3D point
    (z > 0, rviz's Publish Point) in the camera's optical frame, projected with camera_info.
    """
    x, y, z = float(msg.point.x), float(msg.point.y), float(msg.point.z)
    if not all(math.isfinite(value) for value in (x, y, z)):
        raise ValueError(f'click ({x}, {y}, {z}) is not a finite point')
    if z == 0.0:
        return x, y
    frame_id = frame.header.frame_id
    if msg.header.frame_id not in ('', frame_id):
        raise ValueError(f"3D point is in frame '{msg.header.frame_id[:80]}', not the camera's "
                         f"optical frame '{frame_id}': publish it there (rviz: fixed frame "
                         f"'{frame_id}')")
    if z < 0.0:
        raise ValueError(f'3D point is behind the camera (z = {z:g} m)')
    model = frame.camera_model
    if model is None:
        raise ValueError('a 3D point needs camera_info: set use_depth and publish camera_info')
    return model.fx * x / z + model.cx, model.fy * y / z + model.cy


class TeachServices:
    """~/teach, ~/forget and the click callback; every refusal says why, changing nothing."""

    def __init__(self, context: TeachContext, book: PromptBook,
                 frames: SegmentedFrames) -> None:
        self.context = context
        self.book = book
        self.frames = frames
        self._taught_count = 0
        self._count_lock = threading.Lock()

    def _camera(self, name: str) -> str:
        return served_camera(self.context.cameras(), name)

    def _next_label(self) -> str:
        with self._count_lock:
            self._taught_count += 1
            return f"{self.context.parameter('teach_label_prefix')}{self._taught_count}"

    def _frame(self, camera: str) -> SegmentedFrame:
        if not self.context.active():
            raise ValueError('the node is not active: activate it, then teach on its frames')
        frame = self.frames.get(camera)
        if frame is None:
            which = f" from camera '{camera}'" if camera else ''
            raise ValueError(f'no segmented frame{which} yet: teach once frames arrive')
        return frame

    def teach_pixel(self, frame: SegmentedFrame, x: float, y: float, label: str,
                    append: bool) -> Taught:
        """Teach the object under (x, y) of ``frame``; raises ValueError with the reason."""
        engine = self.context.engine()
        if engine is None:
            raise ValueError(f'the model is not loaded ({self.context.engine_error()})')
        if len(label) > MAX_PROMPT_CHARACTERS:
            raise ValueError(f'label is longer than {MAX_PROMPT_CHARACTERS} characters')
        region = object_under_pixel(
            frame.rgb, x, y, instance_image=frame.instance_image, depth_m=frame.depth_m,
            depth_gap=self.context.parameter('teach_depth_gap'))
        given = bool(label.strip())
        label = label.strip() or self._next_label()
        prompt = support_prompt(engine, frame.rgb, region.mask, label, given,
                                self.context.parameter('image_prompt_text_weight'))
        version = self.book.replace([prompt], append=append,
                                    max_prompts=self.context.parameter('max_prompts'))
        return Taught(label, version, region, frame.header)

    @always_answers
    def teach(self, request, response):
        response.prompt_version = self.book.current.version
        try:
            camera = self._camera(request.camera)
            taught = self.teach_pixel(self._frame(camera), float(request.x), float(request.y),
                                      request.label, request.append)
        except ValueError as error:  # RegionRefused included
            response.success, response.message = False, str(error)
            return response
        response.success = True
        response.prompt_version = taught.version
        response.method = taught.region.method
        response.mask = conversions.array_to_image(
            taught.region.mask.astype(np.uint8) * 255, 'mono8', taught.header)
        response.message = self._describe(camera, request.x, request.y, taught, request.append)
        return response

    @always_answers
    def forget(self, request, response):
        response.prompt_version = self.book.current.version
        try:
            version, removed = self.book.remove(request.label)
        except ValueError as error:
            response.success, response.message = False, str(error)
            return response
        response.success, response.prompt_version = True, version
        response.message = f"{removed} prompt(s) labelled '{request.label}' removed"
        self.context.log_info(response.message)
        return response

    def on_click(self, camera: str, msg) -> None:
        """A click on a camera's image appends a prompt; what was taught, or why not, is logged."""
        where = f"camera '{camera}'" if camera else 'camera'
        try:
            frame = self._frame(camera)
            x, y = click_pixel(msg, frame)
            taught = self.teach_pixel(frame, x, y, '', append=True)
        except ValueError as error:
            self.context.log_warning(f'click on {where} not taught: {error}')
            return
        except Exception as error:  # noqa: B902 - a subscription callback must not raise
            self.context.log_error(f'click on {where} failed: {type(error).__name__}: {error}')
            return
        self.context.log_info(f'click on {where}: ' + self._describe(camera, x, y, taught, True))

    @staticmethod
    def _describe(camera: str, x: float, y: float, taught: Taught, append: bool) -> str:
        return (f"taught '{taught.label}' from pixel ({x:g}, {y:g}) of camera '{camera}': "
                f'{taught.region.method}, {int(taught.region.mask.sum())} pixels; '
                f"{'appended' if append else 'in force alone'}, prompt version {taught.version}")

