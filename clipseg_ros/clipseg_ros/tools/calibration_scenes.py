"""
The package's default int8 calibration set: synthetic tabletop scenes (:mod:`scenes`), each
with the phrases of its objects and one generic prompt.

The node uses it when ``int8_calibration`` is empty; benchmarks and scripts pass it to the
engine. Its digest covers the renderer's source and the seeds, so the set (and the cache entry
quantized from it) changes whenever the scenes would; the scenes themselves are rendered only
when the network is quantized.
"""

from collections.abc import Iterator
import hashlib
from pathlib import Path

from clipseg_ros.core.int8_calibration import (
    CALIBRATION_FORMAT, CalibrationSet, generic_prompts, MAX_CALIBRATION_FRAMES)
from clipseg_ros.tools import scene_model, scene_render, scenes
from clipseg_ros.tools.scene_model import phrase
import numpy as np

# Seeds no other use of the scenes takes (training 1e6.., validation 8e6.., evaluation 9e6..).
CALIBRATION_SEED_BASE = 7_000_000
# Camera-like frames; the engine resizes them to the model's input as it does camera frames.
FRAME_SIZE = (640, 480)


def synthetic_calibration_set(count: int = MAX_CALIBRATION_FRAMES) -> CalibrationSet:
    """``count`` (at most MAX_CALIBRATION_FRAMES) seeded scenes with their objects' phrases."""
    count = max(1, min(int(count), MAX_CALIBRATION_FRAMES))
    digest = hashlib.sha256(f'{CALIBRATION_FORMAT};{CALIBRATION_SEED_BASE};{count};'
                            f'{FRAME_SIZE}'.encode())
    for module in (scenes, scene_render, scene_model):
        digest.update(Path(module.__file__).read_bytes())

    def samples() -> Iterator[tuple[np.ndarray, tuple[str, ...]]]:
        for index in range(count):
            seed = CALIBRATION_SEED_BASE + index
            scene = scenes.render_scene(seed, *FRAME_SIZE)
            rng = np.random.default_rng(seed)
            texts = tuple(phrase(obj, rng) for obj in scene.objects)
            yield scene.rgb, texts + generic_prompts(index)[:1]
    return CalibrationSet(f'{count} synthetic scenes of the package', digest.hexdigest(),
                          count, samples)
