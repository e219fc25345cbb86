"""
int8 for the OpenVINO back end: the converted float graph quantized with NNCF's post-training
quantization, from calibration samples the engine makes. No ROS.

Settings (docs/cpu_backends.md has the measurements behind them): ``ModelType.TRANSFORMER``
(SmoothQuant on the matrix multiplications, the attention's softmax and layer norms left in
float, NNCF's mixed preset) and the decoder's transposed convolutions left in float: they turn
64 channels into the probability map, where a rounding step shows directly in the output.
"""

from collections.abc import Callable, Sequence
import logging
import time
from typing import Any

import numpy as np

# Bump when the settings below change, so older int8 cache entries are not used.
QUANTIZATION_FORMAT = '1'
# Layer types NNCF leaves in float (see the module docstring).
FLOAT_LAYER_TYPES = ('ConvolutionBackpropData',)
# Seconds quantizing takes per calibration sample, in multiples of one float32 inference of
# that sample: NNCF runs the samples through the model about this often (statistics for
# SmoothQuant, for the ranges and for the bias correction), plus its graph work.
INFERENCES_PER_SAMPLE = 4.0
SETUP_SECONDS = 5.0

_LOGGER = logging.getLogger(__name__)


def nncf_settings() -> dict[str, Any]:
    """The keyword arguments given to ``nncf.quantize`` besides the model and the data."""
    import nncf
    return {'model_type': nncf.ModelType.TRANSFORMER,
            'ignored_scope': nncf.IgnoredScope(types=list(FLOAT_LAYER_TYPES), validate=False)}


def quantize(model: Any, samples: Sequence[Sequence[np.ndarray]], what: str, source: str,
             seconds_per_inference: float,
             log: Callable[[str], None] = _LOGGER.info) -> Any:
    """
    Return ``model`` (an OpenVINO float model of ``what``) quantized to int8 on ``samples``
    (lists of the model's inputs, made from ``source``), saying first what it does and for about
    how long (``seconds_per_inference``: one float inference of a sample, measured by the
    caller), then how long it took.
    """
    import nncf
    estimate = SETUP_SECONDS + INFERENCES_PER_SAMPLE * seconds_per_inference * len(samples)
    log(f'int8: quantizing {what} with NNCF {nncf.__version__} on {len(samples)} calibration '
        f'samples ({source}); this takes about {estimate:.0f} s, once: the result is cached')
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(samples)), subset_size=len(samples),
                              **nncf_settings())
    log(f'int8: quantized {what} in {time.perf_counter() - start:.1f} s')
    return quantized
