"""
CLIPSeg's shared-encoder forward compiled with OpenVINO for the CPU. No ROS.

The same interface as :class:`~clipseg_ros.core.network.SharedEncoderNetwork`: (B, 3, r, r)
pixels and (N, D) prompt embeddings in, (B, N, r, r) float32 probabilities out. One OpenVINO
model per input size runs the vision encoder once for the B frames (up to the last extracted
layer) and the decoder for all B x N (frame, prompt) rows, with B and N dynamic. The decoder
reads the token grid's side from the input size when it is traced, and the interpolated
position embeddings are constants of the graph, so a new size is converted again (cached on
disk, see :mod:`clipseg_ros.core.compiled_model_cache`). In int8 the converted model is
quantized (:mod:`clipseg_ros.core.int8_quantization`) on samples from an :class:`Int8Calibration`
and cached under a key that adds the calibration set's digest and the NNCF version.
"""

import hashlib
import logging
from pathlib import Path
import time
from typing import Any
import warnings

from clipseg_ros.core.compiled_model_cache import CompiledModelCache
from clipseg_ros.core.cuda_graphs import CudaGraphCache
from clipseg_ros.core.int8_calibration import Int8Calibration
from clipseg_ros.core.int8_quantization import QUANTIZATION_FORMAT, quantize
from clipseg_ros.core.network import SharedEncoderNetwork
import openvino
import torch
import transformers

# Bump when the traced graph changes, so older cache entries are not used.
GRAPH_FORMAT = '1'
MODEL_FILE = 'model.xml'
_PRECISION_HINTS = {torch.float32: 'f32', torch.bfloat16: 'bf16'}

_LOGGER = logging.getLogger(__name__)


class _SharedEncoderForward(torch.nn.Module):
    """The traced function: pixels (B, 3, r, r), embeddings (N, D) -> logits (B, N, r, r)."""

    def __init__(self, network: SharedEncoderNetwork) -> None:
        super().__init__()
        self.model = network.model  # registered, so the trace sees the weights as parameters
        self._network = network

    def forward(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        activations = self._network.encode(pixel_values)
        frames, count = pixel_values.shape[0], embeddings.shape[0]
        # Frame-major rows, with no branch on B or N: the trace must hold for every value.
        shared = [a.unsqueeze(1).expand(-1, count, -1, -1).flatten(0, 1) for a in activations]
        conditional = embeddings.unsqueeze(0).expand(frames, -1, -1).flatten(0, 1)
        logits = self.model.decoder(shared, conditional).logits
        return logits.reshape(frames, count, logits.shape[-2], logits.shape[-1])


def weights_digest(model: Any) -> str:
    """SHA-256 of the model's config and every tensor of its state dict (names, dtypes, bytes)."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


class OpenVinoNetwork:
    """(B, 3, r, r) pixels and (N, D) prompt embeddings in, (B, N, r, r) float32
    probabilities out, computed by OpenVINO on the CPU in ``precision`` (float32, bfloat16, or
    int8 with ``calibration``, its other layers in ``float_precision``)."""

    def __init__(self, model: Any, model_name: str, precision: torch.dtype,
                 cache_folder: Path | None, float_precision: torch.dtype | None = None,
                 calibration: Int8Calibration | None = None) -> None:
        float_precision = float_precision or precision
        if float_precision not in _PRECISION_HINTS or precision not in (
                float_precision, torch.int8):
            raise ValueError(f'OpenVINO runs float32, bfloat16 or int8 here, not {precision} '
                             f'with {float_precision}')
        if (precision == torch.int8) != (calibration is not None):
            raise ValueError('int8 needs calibration samples, and only int8 takes them')
        self.float_precision = float_precision
        self.calibration = calibration
        self.quantizations = 0   # nncf.quantize runs (a cache hit makes none)
        # Checks extract_layers and holds the model, the encoder code and the per-size
        # positions.
        self._torch_network = SharedEncoderNetwork(model, model_name, use_cuda_graphs=False)
        self.patch_size = self._torch_network.patch_size
        self.precision = precision
        self.cache = CompiledModelCache(cache_folder) if cache_folder is not None else None
        self.graphs = CudaGraphCache(self._infer, enabled=False)  # the engine's interface
        self.conversions = 0     # convert_model runs (a cache hit makes none)
        self.calls = 0           # inferences
        self._core = openvino.Core()
        self._request: Any = None
        self._size = 0
        self._weights_digest = ''
        self._model_name = model_name

    @property
    def model(self) -> Any:
        """The torch model (None once the engine is released)."""
        return self._torch_network.model

    @model.setter
    def model(self, value: Any) -> None:
        # One reference, so that the engine's release frees the model.
        self._torch_network.model = value

    def probabilities(self, pixel_values: torch.Tensor,
                      embeddings: torch.Tensor) -> torch.Tensor:
        """Return (B, N, r, r) float32 probabilities of B frames for N prompt embeddings."""
        self.prepare(pixel_values.shape[-1])
        return self.graphs(pixel_values, embeddings)

    def prepare(self, size: int) -> None:
        """Have the model for size x size inputs compiled (from the cache when it has it)."""
        if self._request is not None and self._size == size:
            return
        self._request = None
        compiled = self._compile(size)
        self._request = compiled.create_infer_request()
        self._size = size

    def forget_shapes(self) -> None:
        """Drop the compiled model (it is made again for the next input)."""
        self._request = None
        self._size = 0
        self._torch_network.forget_shapes()

    def key_fields(self, size: int, quantized: bool | None = None) -> dict[str, str]:
        """What a cached model depends on: weights and config, input size, software versions;
        for the int8 model (``quantized``, default: this network's) also the calibration set
        and NNCF's version."""
        if not self._weights_digest:
            self._weights_digest = weights_digest(self.model)
        fields = {'format': GRAPH_FORMAT, 'weights_and_config': self._weights_digest,
                  'input_size': str(size), 'openvino': openvino.__version__,
                  'torch': torch.__version__, 'transformers': transformers.__version__}
        if quantized if quantized is not None else self.calibration is not None:
            fields.update({'precision': 'int8', 'quantization': QUANTIZATION_FORMAT,
                           'int8_calibration': self.calibration.digest,
                           'nncf': self.calibration.nncf_version})
        return fields

    def _compile(self, size: int) -> Any:
        config = {'INFERENCE_PRECISION_HINT': _PRECISION_HINTS[self.float_precision],
                  'INFERENCE_NUM_THREADS': torch.get_num_threads(),
                  'PERFORMANCE_HINT': 'LATENCY'}
        fields = self.key_fields(size)
        compiled = self._cached(fields, config)
        if compiled is not None:
            return compiled
        model = self._float_model(size)
        if self.calibration is not None:
            model = self._quantize(model, size)
            self._store(fields, model)
        return self._core.compile_model(model, 'CPU', config)

    def _cached(self, fields: dict[str, str], config: dict | None) -> Any:
        """The cached model for ``fields``, compiled with ``config`` (None: read, not
        compiled), or None on a miss."""
        if self.cache is None:
            return None
        entry = self.cache.lookup(fields)
        if entry is None:
            return None
        try:
            if config is None:
                return self._core.read_model(str(entry / MODEL_FILE))
            return self._core.compile_model(str(entry / MODEL_FILE), 'CPU', config)
        except RuntimeError:  # checksums matched but OpenVINO refused it: rebuild
            self.cache.discard(fields)
            return None

    def _store(self, fields: dict[str, str], model: Any) -> None:
        if self.cache is not None:
            self.cache.store(fields, lambda folder: openvino.save_model(
                model, str(folder / MODEL_FILE), compress_to_fp16=False))

    def _float_model(self, size: int) -> Any:
        """The converted float model: the float cache entry, or converted now (and stored)."""
        fields = self.key_fields(size, quantized=False)
        if self.calibration is not None:
            cached = self._cached(fields, None)
            if cached is not None:
                return cached
        converted = self._convert(size)
        self._store(fields, converted)
        return converted

    def _quantize(self, model: Any, size: int) -> Any:
        """``model`` quantized to int8 on the calibration samples at ``size``."""
        samples = self.calibration.samples(size)
        # A float32 inference of a sample (after a first one), to say how long it will take.
        probe = self._core.compile_model(model, 'CPU', {
            'INFERENCE_PRECISION_HINT': 'f32',
            'INFERENCE_NUM_THREADS': torch.get_num_threads(), 'PERFORMANCE_HINT': 'LATENCY'})
        request = probe.create_infer_request()
        request.infer(samples[0])
        start = time.perf_counter()
        request.infer(samples[-1])
        seconds = time.perf_counter() - start
        del request, probe
        quantized = quantize(model, samples, f'{self._model_name} at {size} px',
                             self.calibration.description, seconds, log=_LOGGER.info)
        self.quantizations += 1
        return quantized

    def _convert(self, size: int) -> Any:
        """Trace the shared-encoder forward at size x size and convert it (float32 weights)."""
        embedding_size = int(self.model.config.projection_dim)
        # Outside the engine's inference mode: the trace needs ordinary tensors.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every shape it reads; B and N stay dynamic below.
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            self._torch_network.forget_shapes()
            self._torch_network._update_positions(size)
            # B = 2, N = 3: distinct sizes, so no broadcast of a 1 is taken for granted.
            example = (torch.zeros(2, 3, size, size), torch.zeros(3, embedding_size))
            converted = openvino.convert_model(
                _SharedEncoderForward(self._torch_network), example_input=example,
                input=[openvino.PartialShape([-1, 3, size, size]),
                       openvino.PartialShape([-1, embedding_size])])
            self._torch_network.forget_shapes()
        self.conversions += 1
        return converted

    def _infer(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self._request.infer(
            [pixel_values.to(torch.float32).contiguous().numpy(),
             embeddings.to(torch.float32).contiguous().numpy()])
        # The sigmoid reads OpenVINO's buffer (which the next inference overwrites) and writes
        # a new tensor, so no copy is needed. It runs in float32: in bfloat16 it would round
        # to 1.0 from a logit of about 5.5.
        return torch.sigmoid(torch.from_numpy(self._request.get_output_tensor(0).data))
