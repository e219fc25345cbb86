"""
What the engine returns for one frame, and how one frame's maps become it. numpy / torch, no ROS.
"""

from dataclasses import dataclass

from clipseg_ros.core.frame_maps import labels_at_frame_size
from clipseg_ros.core.refine import GuidedRefinement
from clipseg_ros.core.region_stats import (
    label_histograms, region_stats, RegionStats, stats_from_label_histograms)
import numpy as np
import torch


@dataclass
class SegmentationResult:
    """
    Result of :meth:`ClipSegEngine.segment` for a frame of size H x W and N prompts.

    ``labels`` is (H, W) uint8: 0 = background, k = 1-based index of the prompt with the highest
    probability at that pixel when that probability is >= the threshold. ``confidence`` is that
    highest probability (over all prompts), (H, W) float32. ``max_confidence`` is (N,) float32,
    each prompt's maximum over the image. ``stats`` holds each prompt's pixel count, box,
    centroid and mean confidence in ``labels``. ``probabilities`` is (N, H, W) float32 when
    requested.
    """

    labels: np.ndarray
    confidence: np.ndarray
    max_confidence: np.ndarray
    stats: RegionStats
    probabilities: np.ndarray | None
    inference_seconds: float


def to_host(tensors: list[torch.Tensor], device: torch.device) -> list[np.ndarray]:
    """Copy tensors to numpy; on CUDA with a single synchronisation for all of them."""
    if device.type == 'cuda':
        copies = [t.to('cpu', non_blocking=True) for t in tensors]
        torch.cuda.current_stream(device).synchronize()
    else:
        copies = tensors
    return [t.numpy() for t in copies]


def frame_maps_to_host(frame_probabilities: torch.Tensor, height: int, width: int,
                       threshold: float, prompt_count: int, return_probabilities: bool,
                       device: torch.device,
                       refinement: GuidedRefinement | None = None) -> dict[str, np.ndarray]:
    """
    Bring one frame's (N, r, r) probabilities to its H x W labels and confidence, on the host.

    With ``refinement`` (made from these probabilities), its refined maps replace the bilinear.

    On the GPU the per-prompt histograms are computed there too (microseconds, and only small
    tables travel); on the CPU :func:`host_result` computes the statistics with numpy.
    """
    maps = labels_at_frame_size(
        refinement.cell_maps if refinement else frame_probabilities, height, width, threshold,
        return_probabilities, make_slab=refinement.slab if refinement else None)
    outputs = {'labels': maps.labels, 'confidence': maps.confidence,
               'max_confidence': maps.max_confidence}
    if device.type == 'cuda':
        outputs.update(label_histograms(maps.labels, maps.confidence, prompt_count))
    if return_probabilities:
        outputs['probabilities'] = maps.probabilities
    return dict(zip(outputs, to_host(list(outputs.values()), device)))


def host_result(host: dict[str, np.ndarray], prompt_count: int,
                inference_seconds: float) -> SegmentationResult:
    """The :class:`SegmentationResult` of one frame's host maps."""
    if 'row_counts' in host:
        stats = stats_from_label_histograms(host)
    else:  # on the CPU, numpy's bincount beats torch's scatter
        stats = region_stats(host['labels'], host['confidence'], prompt_count)
    return SegmentationResult(
        labels=host['labels'], confidence=host['confidence'],
        max_confidence=host['max_confidence'], stats=stats,
        probabilities=host.get('probabilities'), inference_seconds=inference_seconds)
