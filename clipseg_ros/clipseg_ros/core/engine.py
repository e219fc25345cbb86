"""
CLIPSeg inference engine: pure torch + transformers, no ROS.

Prompts become embeddings once (text embeddings cached by string); each frame then goes
through one pipeline, :meth:`ClipSegEngine.segment`: preprocess -> encode once -> decode all
prompts -> probabilities at the frame's size -> labels and per-prompt statistics.

Typical use::

    engine = ClipSegEngine('CIDAS/clipseg-rd64-refined')
    prompts = engine.text_prompts(['a cup', 'a person'])
    result = engine.segment(image_rgb, prompts, threshold=0.3)
    result.labels  # (H, W) uint8, 0 = background, k = prompts[k - 1]
"""

from collections.abc import Mapping, Sequence
import functools
import gc
import logging
import numbers
import threading
import time
from typing import Any

from clipseg_ros.core.backends import build_network, nncf_version, resolve_runtime, Runtime
from clipseg_ros.core.cpu_features import CpuFeatures
from clipseg_ros.core.int8_calibration import (
    CalibrationSet, folder_calibration_set, Int8Calibration)
from clipseg_ros.core.model_loading import (
    check_transformers_version, DEFAULT_MODEL, describe_error, load_pretrained, ModelLoadError,
    PreprocessConfig)
from clipseg_ros.core.options import check_resolution
from clipseg_ros.core.preprocess import FramePreprocessor
from clipseg_ros.core.prompts import check_prompts, check_texts, Prompt, TextEmbeddingCache
from clipseg_ros.core.refine import (
    check_depths, GuidedRefinement, patch_footprint, RefineSettings)
from clipseg_ros.core.results import frame_maps_to_host, host_result, SegmentationResult
from clipseg_ros.core.rgb_images import check_rgb_image
from clipseg_ros.core.visual_prompt import engineer_visual_prompt
import numpy as np
import torch

_LOGGER = logging.getLogger(__name__)


def check_unit_interval(name: str, value: float) -> float:
    """Return ``value`` as a float in [0, 1]; ValueError for anything else (NaN included)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0.0 <= float(value) <= 1.0):
        raise ValueError(f'{name} must be a number in [0, 1], got {value!r}')
    return float(value)


class ClipSegEngine:
    """
    CLIPSeg segmentation of RGB frames for any number of text or image prompts.

    All methods are thread-safe: model use is serialised by an internal lock.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str = 'auto', dtype: str = 'auto',
                 resolution: int = 0, compile_mode: str = 'auto', backend: str = 'auto',
                 compiled_model_cache: str | None = 'auto',
                 cpu_features: CpuFeatures | None = None,
                 int8_calibration: CalibrationSet | str | None = None) -> None:
        """
        Load ``model`` (hub id or ``save_pretrained`` folder) onto ``device``, computed by
        ``backend`` (auto, torch, openvino) in ``dtype``; ``compiled_model_cache``: folder of
        converted models ('auto': the user's cache folder; '' or None: none); ``cpu_features``
        default to this machine's (see :mod:`clipseg_ros.core.backends`);
        ``int8_calibration``: for dtype int8, the frames to quantize from (a
        :class:`CalibrationSet` or a folder of camera frames; the package's synthetic scenes
        are ``clipseg_ros.tools.calibration_scenes.synthetic_calibration_set()``).

        Raises ValueError for invalid arguments (a bad calibration folder included) and
        ModelLoadError when the model cannot be loaded (the message names the model, the cause
        and the fix).
        """
        runtime, mode = resolve_runtime(device, dtype, backend, resolution, compile_mode,
                                        cpu_features)
        calibration = _calibration_set(runtime, int8_calibration)
        check_transformers_version()
        network, tokenizer, preprocess = load_pretrained(model, runtime.tensor_dtype)
        self._setup(network, tokenizer, preprocess, runtime, resolution, mode, model,
                    compiled_model_cache, calibration)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any,
                   preprocess: PreprocessConfig | Mapping[str, Any],
                   device: str = 'auto', dtype: str = 'auto', resolution: int = 0,
                   compile_mode: str = 'auto',
                   model_name: str = 'in-memory model', backend: str = 'auto',
                   compiled_model_cache: str | None = 'auto',
                   cpu_features: CpuFeatures | None = None,
                   int8_calibration: CalibrationSet | str | None = None) -> 'ClipSegEngine':
        """
        Build an engine around an already constructed ``CLIPSegForImageSegmentation``.

        ``preprocess`` is a :class:`PreprocessConfig` or a processor-config dictionary. The
        model is moved to the device and dtype in place. Used by benchmarks and tests.
        """
        runtime, mode = resolve_runtime(device, dtype, backend, resolution, compile_mode,
                                        cpu_features)
        calibration = _calibration_set(runtime, int8_calibration)
        if not isinstance(preprocess, PreprocessConfig):
            preprocess = PreprocessConfig.from_dict(preprocess)
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, preprocess, runtime, resolution, mode, model_name,
                      compiled_model_cache, calibration)
        return engine

    def _setup(self, model: Any, tokenizer: Any, preprocess: PreprocessConfig,
               runtime: Runtime, resolution: int, compile_mode: str, model_name: str,
               compiled_model_cache: str | None,
               calibration: CalibrationSet | None = None) -> None:
        self._lock = threading.RLock()
        self._runtime = runtime
        # _dtype: the torch side's tensors (float32 under OpenVINO, which applies the precision)
        device, dtype = runtime.device, runtime.tensor_dtype
        self._device, self._dtype, self._model_name = device, dtype, model_name
        self._preprocess_config = preprocess
        try:
            self._model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        except RuntimeError as exc:  # out of memory, or a device that fails at first use
            raise ModelLoadError(f'could not move {model_name} to {device} as {dtype}: '
                                 f'{describe_error(exc)}') from exc
        self._tokenizer = tokenizer
        self._embedding_size = int(model.config.projection_dim)
        self._max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self._frame_preprocessor = FramePreprocessor(preprocess, device, dtype)
        self._text_cache = TextEmbeddingCache(self._encode_texts)
        int8 = None
        if calibration is not None:
            int8 = Int8Calibration(calibration.digest, calibration.description,
                                   functools.partial(self._calibration_samples, calibration),
                                   nncf_version() or '')
        self._network = build_network(self._model, model_name, runtime, compile_mode,
                                      compiled_model_cache, int8)
        self._resolution = self.check_model_resolution(resolution)
        if self._resolution != preprocess.size:
            _LOGGER.info('running at %d px; the processor config of %s says %d px',
                         self._resolution, model_name, preprocess.size)
        # OpenVINO converts (and quantizes) here, not at frame one.
        self._network.prepare(self._resolution)

    def _calibration_samples(self, calibration: CalibrationSet,
                             size: int) -> list[list[np.ndarray]]:
        """
        The network's inputs for each calibration frame at ``size``: the frame preprocessed as
        a camera frame, and the embeddings of its text prompts and of the previous frame as a
        support image (so image prompts' embeddings are calibrated too).
        """
        samples, previous = [], None
        config = self._preprocess_config
        with torch.inference_mode():
            for rgb, texts in calibration.samples():
                embeddings = self._encode_texts(list(texts))
                if previous is not None:
                    support = torch.from_numpy(engineer_visual_prompt(
                        previous, None, size, mean=config.mean, std=config.std,
                        rescale_factor=config.rescale_factor)).unsqueeze(0)
                    image = self._model.clip.get_image_features(
                        pixel_values=support.to(self._device, self._dtype)).pooler_output
                    embeddings = torch.cat([embeddings, image])
                pixels = self._frame_preprocessor(rgb, size, False)
                samples.append([pixels.float().numpy(), embeddings.float().numpy()])
                previous = rgb
        return samples

    # ------------------------------------------------------------------ properties

    # Fixed at construction: read-only views of what the engine was built with.
    device = property(lambda self: self._device, doc='Device the model runs on.')
    dtype = property(lambda self: self._runtime.dtype,
                     doc='Floating-point type the network computes in.')
    backend = property(lambda self: self._runtime.backend, doc="'torch' or 'openvino'.")
    runtime_summary = property(lambda self: self._runtime.summary(),
                               doc='Back end, precision and CPU features, in one line.')
    model_name = property(lambda self: self._model_name,
                          doc='Hub id or folder the model was loaded from.')
    embedding_size = property(lambda self: self._embedding_size,
                              doc='Length D of the prompt embeddings (projection_dim).')
    preprocess_config = property(lambda self: self._preprocess_config,
                                 doc="Preprocessing constants from the model's processor config.")

    @property
    def compile_mode(self) -> str:
        """Fast path in use: 'none' or 'cuda_graphs'."""
        return 'cuda_graphs' if self._network.graphs.enabled else 'none'

    @property
    def quantized(self) -> bool:
        """Whether the network runs in int8 (another input size means quantizing again)."""
        return self.dtype == torch.int8

    @property
    def resolution(self) -> int:
        """Side of the square image the encoder sees, in pixels."""
        return self._resolution

    @resolution.setter
    def resolution(self, value: int) -> None:
        checked = self.check_model_resolution(value)
        with self._lock:
            if checked != self._resolution:
                self._resolution = checked
                self._network.graphs.clear()

    def check_model_resolution(self, value: int) -> int:
        """
        Return the input side ``value`` means for this model (0: its processor config's size);
        ValueError with the reason when the model cannot run at it.
        """
        checked = check_resolution(value) or self._preprocess_config.size
        if checked % self._network.patch_size:
            raise ValueError(
                f'resolution must be a multiple of the patch size {self._network.patch_size}, '
                f'got {checked}')
        return checked

    # ------------------------------------------------------------------ prompts

    def text_prompts(self, texts: Sequence[str]) -> list[Prompt]:
        """
        Return one text prompt per string, in order; labels are the strings themselves.

        Embeddings are cached by exact string, so only strings not seen before run through the
        text encoder (in one batch).
        """
        texts = check_texts(texts)
        with self._lock:
            self._require_model()
            embeddings = self._text_cache.get(texts)
        return [Prompt(label=text, kind='text', embedding=embedding)
                for text, embedding in zip(texts, embeddings)]

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embed texts in one batch; the caller holds the lock."""
        batch = self._tokenizer(texts, padding=True, truncation=True,
                                max_length=self._max_text_tokens, return_tensors='pt')
        with torch.inference_mode():
            # The same call CLIPSegForImageSegmentation.get_conditional_embeddings makes.
            return self._model.clip.get_text_features(
                input_ids=batch['input_ids'].to(self._device),
                attention_mask=batch['attention_mask'].to(self._device)).pooler_output

    @property
    def text_encoder_calls(self) -> int:
        """How often the text encoder ran (texts not found in the cache)."""
        return self._text_cache.encoder_calls

    def image_prompt(self, support_rgb: np.ndarray, mask: np.ndarray | None = None,
                     label: str = '', text: str | None = None,
                     text_weight: float = 0.5) -> Prompt:
        """
        Return a prompt from a support image and an optional object mask.

        The support image is engineered as the checkpoint was trained (see
        :mod:`clipseg_ros.core.visual_prompt`: resize and normalise, background blurred and pulled
        to the mean colour, crop to the widened mask box, square pad, resize) and embedded with
        the CLIP image encoder. With ``text``, the embedding is
        ``(1 - text_weight) * image + text_weight * text``. The label defaults to ``text``, or
        ``'image'`` without one.
        """
        if not isinstance(label, str):
            raise ValueError(f'label must be a string, got {type(label).__name__}')
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError('text must be None or a non-empty string')
        weight = check_unit_interval('text_weight', text_weight)
        config = self._preprocess_config
        # Normalised at the model size already, so it bypasses _preprocess.
        engineered = engineer_visual_prompt(
            support_rgb, mask, self._resolution, mean=config.mean, std=config.std,
            rescale_factor=config.rescale_factor)
        with self._lock:
            model = self._require_model()
            with torch.inference_mode():
                pixel_values = torch.from_numpy(engineered).unsqueeze(0).to(
                    device=self._device, dtype=self._dtype)
                embedding = model.clip.get_image_features(
                    pixel_values=pixel_values).pooler_output[0]
                if text is not None:
                    text_embedding = self._text_cache.get([text])[0]
                    embedding = (1.0 - weight) * embedding + weight * text_embedding
        return Prompt(label=label or text or 'image', kind='image', embedding=embedding)

    # ------------------------------------------------------------------ inference

    def segment(self, image_rgb: np.ndarray, prompts: Sequence[Prompt], threshold: float = 0.3,
                return_probabilities: bool = False, refine: RefineSettings | None = None,
                depth_m: np.ndarray | None = None) -> SegmentationResult:
        """
        Segment an (H, W, 3) uint8 RGB frame for all ``prompts`` with one encoder pass.

        A pixel gets label k (1-based prompt index) when prompt k has the highest probability
        there and that probability is >= ``threshold``; otherwise 0 (background). A threshold
        of 1 labels nothing. ``refine`` (default: none) refines the maps at the frame's size,
        guided by the frame and ``depth_m``, aligned (H, W) metres (NaN or <= 0: no reading).
        """
        return self.segment_batch([image_rgb], prompts, threshold, return_probabilities,
                                  refine, None if depth_m is None else [depth_m])[0]

    def segment_batch(self, images_rgb: Sequence[np.ndarray], prompts: Sequence[Prompt],
                      threshold: float = 0.3, return_probabilities: bool = False,
                      refine: RefineSettings | None = None,
                      depths_m: Sequence[np.ndarray | None] | None = None
                      ) -> list[SegmentationResult]:
        """
        Segment several frames (of any sizes; several cameras', say) for the same prompts,
        with one encoder pass over all of them; one result per frame, as :meth:`segment`
        gives. Each result's ``inference_seconds`` is the whole batch's. ``depths_m``: one
        aligned depth image or None per frame, used by ``refine``.
        """
        if len(images_rgb) == 0:
            raise ValueError('no image given')
        for image_rgb in images_rgb:
            check_rgb_image(image_rgb)
        depths_m = check_depths(depths_m, images_rgb)
        check_prompts(prompts, self._embedding_size)
        threshold = check_unit_interval('threshold', threshold)
        with self._lock, torch.inference_mode():
            # Timed from here: waiting for the lock (a prompt being embedded, ~/segment) is
            # not inference.
            start = time.perf_counter()
            self._require_model()
            embeddings = torch.stack(
                [p.embedding.to(device=self._device, dtype=self._dtype) for p in prompts])
            # One pinned buffer: only the first frame goes through it, the others copy plainly.
            pixel_values = torch.cat([self._preprocess(image_rgb, pinned=index == 0)
                                      for index, image_rgb in enumerate(images_rgb)])
            probabilities = self._network.probabilities(pixel_values, embeddings)
            host_maps = [
                frame_maps_to_host(frame_probabilities, *image_rgb.shape[:2], threshold,
                                   len(prompts), return_probabilities, self._device,
                                   self._refinement(frame_probabilities, image_rgb, depth_m,
                                                    refine, return_probabilities, threshold))
                for image_rgb, depth_m, frame_probabilities in zip(images_rgb, depths_m,
                                                                   probabilities)]
        elapsed = time.perf_counter() - start
        return [host_result(host, len(prompts), elapsed) for host in host_maps]

    def _refinement(self, probabilities: torch.Tensor, image_rgb: np.ndarray,
                    depth_m: np.ndarray | None,
                    refine: RefineSettings | None,
                    every_prompt: bool, threshold: float) -> GuidedRefinement | None:
        """The guided filter of one frame's maps, or None when refinement is off."""
        if refine is None or not refine.enabled:
            return None
        height, width = image_rgb.shape[:2]
        depth = None if depth_m is None or refine.depth_weight == 0 else \
            torch.from_numpy(np.ascontiguousarray(depth_m)).to(self._device)
        image = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(self._device)
        return GuidedRefinement(probabilities, image,
                                depth, refine, every_prompt=every_prompt, threshold=threshold,
                                patch_pixels=patch_footprint(height, width, self._resolution,
                                                             self._network.patch_size))

    def preprocess(self, image_rgb: np.ndarray) -> torch.Tensor:
        """
        Return the model input for an (H, W, 3) uint8 RGB frame: (1, 3, r, r) normalised.

        Bilinear resize to resolution x resolution (aspect not kept, antialiased when
        shrinking), rescale and normalise with the processor's constants.
        """
        check_rgb_image(image_rgb)
        with self._lock, torch.inference_mode():
            self._require_model()
            return self._preprocess(image_rgb, pinned=False)

    def _preprocess(self, image_rgb: np.ndarray, pinned: bool) -> torch.Tensor:
        return self._frame_preprocessor(image_rgb, self._resolution, pinned)

    # ------------------------------------------------------------------ resources

    def memory_in_use(self) -> int:
        """Return the bytes of device memory torch has allocated (CUDA), 0 on the CPU."""
        if self._device.type == 'cuda':
            return int(torch.cuda.memory_allocated(self._device))
        return 0

    def release(self) -> None:
        """Drop the model and all cached prompts; free CUDA memory. Idempotent."""
        with self._lock:
            self._model = None
            self._tokenizer = None
            self._text_cache.clear()
            self._network.forget_shapes()
            self._network.model = None
            self._frame_preprocessor.clear()
            gc.collect()
            if self._device.type == 'cuda':
                torch.cuda.empty_cache()

    def free_cache(self) -> None:
        """Return unused cached CUDA memory to the driver (e.g. after an out-of-memory error).

        Under the engine lock, so it never lands in the middle of a CUDA graph capture.
        """
        with self._lock:
            if self._device.type == 'cuda':
                torch.cuda.empty_cache()

    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError('the engine was released; create a new ClipSegEngine')
        return self._model


def _calibration_set(runtime: Runtime,
                     calibration: CalibrationSet | str | None) -> CalibrationSet | None:
    """The calibration set of an int8 runtime (a folder is read and checked here); None for
    the float precisions, which take none."""
    if runtime.dtype != torch.int8:
        return None
    if isinstance(calibration, CalibrationSet):
        return calibration
    if not isinstance(calibration, str) or not calibration.strip():
        raise ValueError("dtype 'int8' needs calibration frames: a folder of camera frames, or "
                         'the synthetic set of clipseg_ros.tools.calibration_scenes')
    return folder_calibration_set(calibration.strip())
