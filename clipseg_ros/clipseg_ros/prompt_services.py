"""
The node's services: ~/set_text_prompts, ~/set_image_prompt and ~/segment.

Every request is answered with ``success`` and a ``message``; a refused request changes
nothing. The prompts in force live in a :class:`PromptBook`, replaced as a whole.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import functools
import threading
from typing import Any

from clipseg_ros import conversions
from clipseg_ros.camera_names import served_camera
from clipseg_ros.conversions import ImageConversionError
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.core.prompts import Prompt
from clipseg_ros.parameters import (
    MAX_PROMPT_CHARACTERS, refine_settings, validate_text_prompts)
from clipseg_ros.publishers import PromptSet, segmentation_msg
import numpy as np


class PromptBook:
    """The prompt set in force; replacements are checked against max_prompts atomically."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = PromptSet()

    def replace(self, prompts: Sequence[Prompt], append: bool, max_prompts: int) -> int:
        """Put prompts in force (after the current ones with append); return the version.

        Raises ValueError, changing nothing, when the result would exceed ``max_prompts``.
        """
        with self._lock:  # check and replace at once: concurrent appends stay in bounds
            current = self.current.prompts if append else ()
            total = len(current) + len(prompts)
            if total > max_prompts:
                raise ValueError(f'{total} prompts would exceed max_prompts ({max_prompts})')
            self.current = PromptSet(tuple(current) + tuple(prompts), self.current.version + 1)
            return self.current.version

    def remove(self, label: str) -> tuple[int, int]:
        """Take the prompts labelled ``label`` out of force; return (version, how many).

        Raises ValueError, changing nothing, when none has the label or none would remain.
        """
        with self._lock:
            kept = tuple(p for p in self.current.prompts if p.label != label)
            removed = len(self.current.prompts) - len(kept)
            if removed == 0:
                labels = ', '.join(f"'{p.label}'" for p in self.current.prompts)
                raise ValueError(f"no prompt labelled '{label[:80]}' in force ({labels})")
            if not kept:
                raise ValueError('that would leave no prompt in force: replace them with '
                                 '~/set_text_prompts or ~/teach (append false) instead')
            self.current = PromptSet(kept, self.current.version + 1)
            return self.current.version, removed


@dataclass
class ServiceContext:
    """What the services read from the node, at the moment of each request."""

    engine: Callable[[], ClipSegEngine | None]
    engine_error: Callable[[], str]
    parameter: Callable[[str], Any]
    cameras: Callable[[], list[str]]          # the cameras served, in order
    latest_frame: Callable[[str], Any]        # a camera's newest frame, or None
    frame_to_rgb: Callable[[Any], np.ndarray]
    free_device_cache: Callable[[ClipSegEngine], None]
    log_error: Callable[[str], None]
    # The 3D targets of a segmented frame from a camera's depth (camera, header, labels,
    # prompt count); None where that camera does not use depth.
    depth_targets: Callable[[str, Any, np.ndarray, int], Any]
    # The instances of a segmented image (camera, header, result, paired, prompt set,
    # with_tracks): with_tracks gives that camera's track ids, for its latest frame.
    objects: Callable[..., Any] | None = None
    # The worker's result for a camera's latest frame when it was segmented with the prompts
    # in force and this threshold (camera, threshold), else None.
    segmented: Callable[[str, float], Any] | None = None


def support_prompt(engine: ClipSegEngine, support: np.ndarray, mask: np.ndarray | None,
                   label: str, label_given: bool, text_weight: float) -> Prompt:
    """An image prompt as ~/set_image_prompt makes it: a given label's text mixed in by weight."""
    text = label if text_weight > 0.0 and label_given else None
    return engine.image_prompt(support, mask, label=label, text=text,
                               text_weight=text_weight if text else 0.0)


def always_answers(handler):
    """Wrap a service handler so that any exception becomes a refusal with its reason."""
    @functools.wraps(handler)
    def answer(self, request, response):
        try:
            return handler(self, request, response)
        except Exception as error:  # an exception escaping a service would stop the executor
            self.context.log_error(f'{handler.__name__} failed: {type(error).__name__}: {error}')
            response.success = False
            response.message = f'internal error: {type(error).__name__}: {error}'
            return response
    return answer


class PromptServices:
    """The service callbacks; they exist in every lifecycle state and say why they refuse."""

    def __init__(self, context: ServiceContext, book: PromptBook) -> None:
        self.context = context
        self.book = book

    def _loaded_engine(self) -> ClipSegEngine:
        engine = self.context.engine()  # read once: cleanup may clear it meanwhile
        if engine is None:
            raise ValueError(f'the model is not loaded ({self.context.engine_error()})')
        return engine

    def _encode_texts(self, texts: list[str]) -> list[Prompt]:
        problem = validate_text_prompts(texts, self.context.parameter('max_prompts'))
        if problem is not None:
            raise ValueError(problem)
        engine = self._loaded_engine()
        try:
            return engine.text_prompts(texts)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f'cannot encode prompts: {error}') from error

    @always_answers
    def set_text_prompts(self, request, response):
        response.prompt_version = self.book.current.version
        texts = list(request.prompts)
        try:
            encoded = self._encode_texts(texts)
            response.prompt_version = self.book.replace(
                encoded, append=False, max_prompts=self.context.parameter('max_prompts'))
        except ValueError as error:  # includes max_prompts lowered meanwhile
            response.success, response.message = False, str(error)
            return response
        response.success = True
        response.message = f'{len(encoded)} text prompt(s) in force: {texts}'
        return response

    @always_answers
    def set_image_prompt(self, request, response):
        response.prompt_version = self.book.current.version
        try:
            prompt = self._image_prompt_from_request(request)
        except (ValueError, RuntimeError) as error:
            response.success, response.message = False, str(error)
            return response
        try:
            response.prompt_version = self.book.replace(
                [prompt], append=request.append,
                max_prompts=self.context.parameter('max_prompts'))
        except ValueError as error:
            response.success, response.message = False, f'refused: {error}'
            return response
        response.success = True
        response.message = (f"image prompt '{prompt.label}' "
                            f"{'appended' if request.append else 'in force'}")
        return response

    def _image_prompt_from_request(self, request) -> Prompt:
        engine = self._loaded_engine()
        if len(request.label) > MAX_PROMPT_CHARACTERS:
            raise ValueError(f'label is longer than {MAX_PROMPT_CHARACTERS} characters')
        max_pixels = self.context.parameter('max_image_pixels')
        try:
            support = conversions.image_to_rgb(request.image, max_pixels)
        except ImageConversionError as error:
            raise ValueError(f'support image: {error}') from error
        mask = None
        if request.mask.width != 0 or request.mask.height != 0 or len(request.mask.data) != 0:
            try:
                mask = conversions.mask_from_image(request.mask, max_pixels)
            except ImageConversionError as error:
                raise ValueError(f'mask: {error}') from error
            if mask.shape != support.shape[:2]:
                raise ValueError(f'mask is {mask.shape[1]}x{mask.shape[0]} but the support '
                                 f'image is {support.shape[1]}x{support.shape[0]}')
            if not mask.any():
                raise ValueError('mask selects no pixel: mark the object with nonzero values')
        label = request.label.strip() or f'image_prompt_{self.book.current.version + 1}'
        return support_prompt(engine, support, mask, label, bool(request.label.strip()),
                              self.context.parameter('image_prompt_text_weight'))

    @always_answers
    def segment(self, request, response):
        response.success = False
        try:
            engine = self._loaded_engine()
            prompt_set = self.book.current
            if len(request.prompts) > 0:  # one-off prompts for this call; the set stays
                # version 0: no prompt set in force produced the result
                prompt_set = PromptSet(tuple(self._encode_texts(list(request.prompts))), 0)
            if not prompt_set.prompts:
                raise ValueError('no prompts in force')
            camera = self._camera(request.camera)
            threshold = self.context.parameter('threshold')
            if self._answer_from_published(request, camera, threshold, response):
                return response
            header, image_rgb = self._image_to_segment(request.image, camera)
        except ValueError as error:
            response.message = str(error)
            return response
        try:
            result = engine.segment(image_rgb, prompt_set.prompts, threshold=threshold,
                                    refine=refine_settings(self.context.parameter))
        except Exception as error:  # answer with the reason instead of failing the call
            self.context.free_device_cache(engine)
            response.message = f'inference failed: {type(error).__name__}: {error}'
            return response
        # 3D when the camera received a depth image of this stamp (its latest frame's, say).
        paired = self.context.depth_targets(camera, header, result.labels,
                                            len(prompt_set.prompts))
        objects = None
        if self.context.objects is not None:
            # Track ids only for the camera's latest frame with the prompts in force.
            latest = len(request.image.data) == 0 and len(request.prompts) == 0
            objects = self.context.objects(camera, header, result, paired, prompt_set, latest)
        response.segmentation = segmentation_msg(header, result, prompt_set, threshold, paired,
                                                 objects)
        response.mask = conversions.array_to_image(result.labels, 'mono8', header)
        response.confidence = conversions.array_to_image(result.confidence, '32FC1', header)
        response.success = True
        response.message = f'segmented {image_rgb.shape[1]}x{image_rgb.shape[0]} with ' \
                           f'{len(prompt_set.prompts)} prompt(s)'
        return response

    def _answer_from_published(self, request, camera: str, threshold: float,
                               response) -> bool:
        """Fill ``response`` from the frame the worker already segmented and published when the
        request asks for just that (latest frame, prompts in force); False otherwise."""
        if len(request.image.data) or request.image.width or request.image.height or \
                len(request.prompts) or self.context.segmented is None:
            return False
        done = self.context.segmented(camera, threshold)
        if done is None:
            return False
        header, result = done.msg.header, done.result
        response.segmentation = segmentation_msg(header, result, done.prompt_set, threshold,
                                                 done.paired, done.objects)
        response.mask = conversions.array_to_image(result.labels, 'mono8', header)
        response.confidence = conversions.array_to_image(result.confidence, '32FC1', header)
        response.success = True
        response.message = (f'segmented {result.labels.shape[1]}x{result.labels.shape[0]} with '
                            f'{len(done.prompt_set.prompts)} prompt(s) (the frame already '
                            'published)')
        return True

    def _camera(self, name: str) -> str:
        """The camera a request names ('' = the first camera), or a refusal listing them."""
        return served_camera(self.context.cameras(), name)

    def _image_to_segment(self, image, camera: str) -> tuple[Any, np.ndarray]:
        """The request's image, or the camera's latest frame when it is empty."""
        try:
            if image.width == 0 and image.height == 0 and len(image.data) == 0:
                latest = self.context.latest_frame(camera)
                if latest is None:
                    which = f" from camera '{camera}'" if camera else ''
                    raise ValueError(f'no image given and no camera frame received{which} yet')
                return latest.header, self.context.frame_to_rgb(latest)
            return image.header, conversions.image_to_rgb(
                image, self.context.parameter('max_image_pixels'))
        except ImageConversionError as error:
            raise ValueError(f'image: {error}') from error
