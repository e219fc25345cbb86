"""
From the model's probability maps to the camera frame: bilinear resize, best prompt, threshold,
a slab of rows at a time so memory does not grow with prompts x pixels. torch (and OpenCV for
the best prompt on the CPU), no ROS.
"""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.nn.functional import interpolate

# Elements of one (prompts x rows x width) slab when probability maps are brought to the
# frame's size: the slabs' temporaries stay at tens of MB for any prompt count and frame size.
SLAB_ELEMENTS = 1 << 22


@dataclass
class FrameMaps:
    """The frame-size outputs of one segmentation, on the device the maps were on."""

    labels: torch.Tensor          # (H, W) uint8
    confidence: torch.Tensor      # (H, W) float32
    max_confidence: torch.Tensor  # (N,) float32
    probabilities: torch.Tensor | None  # (N, H, W) float32, only when asked for


def _bilinear_taps(out_size: int, in_size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Source indices and weights of bilinear resizing along one axis (align_corners=False).

    The same sampling as torch's ``interpolate(mode='bilinear', align_corners=False)``:
    output pixel i reads source position (i + 0.5) * in / out - 0.5, clamped at 0.
    Returns (first index, second index, weight of the second); the first weighs 1 - that.
    """
    position = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * \
        (in_size / out_size) - 0.5
    position = position.clamp(min=0.0)
    first = position.floor().to(torch.int64).clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first, second, position - first.to(torch.float32)


def best_prompt(slab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    (rows, W) highest probability and (rows, W) uint8 index of the first prompt that has it,
    of an (N, rows, W) float32 slab: ``slab.max(dim=0)``, which on the CPU reduces across
    prompts several times slower than comparing them one after another with OpenCV.
    """
    if slab.device.type != 'cpu':
        value, index = slab.max(dim=0)
        return value, index.to(torch.uint8)
    # Probabilities are finite (sigmoid outputs): OpenCV's max, unlike torch's, does not carry
    # a NaN forward.
    planes = slab.numpy()
    best = planes[0].copy()
    index = np.zeros(best.shape, np.uint8)
    for prompt in range(1, len(planes)):
        greater = cv2.compare(planes[prompt], best, cv2.CMP_GT)  # 255 where greater
        cv2.copyTo(np.full_like(index, prompt), greater, index)
        cv2.max(best, planes[prompt], dst=best)
    return torch.from_numpy(best), torch.from_numpy(index)


def resize_with_interpolate(device: torch.device) -> bool:
    """Whether slabs are resized by torch's interpolate kernels (on the CPU, where they are
    several times faster than the gathers; CUDA keeps the gathers)."""
    return device.type == 'cpu'


def labels_at_frame_size(probabilities: torch.Tensor, height: int, width: int,
                         threshold: float, keep_probabilities: bool,
                         make_slab: Callable[[slice], torch.Tensor] | None = None) -> FrameMaps:
    """
    Resize (N, r, r) probability maps to the frame bilinearly and label each pixel.

    The maps are resized a slab of rows at a time, and each slab is reduced to the best prompt
    and its probability before the next, so memory does not grow with N x H x W (16 prompts on
    a 4096 x 4096 frame would need 1 GB a frame at once). A pixel gets label k (1-based) when
    prompt k is the most probable there and its probability reaches ``threshold``; a threshold
    of 1 labels nothing, even where a probability rounds to 1. ``make_slab(rows)``, when given,
    makes each (N, rows, W) slab instead of the bilinear resize (core/refine.py).
    """
    count, rows_in, columns_in = probabilities.shape
    device = probabilities.device
    if make_slab is None:
        row_first, row_second, row_weight = _bilinear_taps(height, rows_in, device)
        column_first, column_second, column_weight = _bilinear_taps(width, columns_in, device)
    labels = torch.empty(height, width, dtype=torch.uint8, device=device)
    confidence = torch.empty(height, width, dtype=torch.float32, device=device)
    max_confidence = torch.zeros(count, dtype=torch.float32, device=device)
    kept = (torch.empty(count, height, width, dtype=torch.float32, device=device)
            if keep_probabilities else None)
    slab_rows = max(1, SLAB_ELEMENTS // (count * width))
    label_nothing = threshold >= 1.0
    on_cpu = resize_with_interpolate(device)
    for top in range(0, height, slab_rows):
        rows = slice(top, min(top + slab_rows, height))
        if make_slab is not None:
            slab = make_slab(rows)
        elif on_cpu and rows.stop - rows.start == height:
            # One slab for the whole frame: torch's own kernel does it all.
            slab = interpolate(probabilities.unsqueeze(0), size=(height, width),
                               mode='bilinear', align_corners=False).squeeze(0)
        else:
            weight = row_weight[rows].view(1, -1, 1)
            # Rows first, then columns: (N, slab, r) -> (N, slab, W).
            blended = probabilities[:, row_first[rows]] * (1.0 - weight) + \
                probabilities[:, row_second[rows]] * weight
            if on_cpu:  # torch's linear kernel samples the columns as the taps do
                slab = interpolate(blended.view(1, -1, columns_in), size=width, mode='linear',
                                   align_corners=False).view(count, -1, width)
            else:
                slab = blended[:, :, column_first] * (1.0 - column_weight) + \
                    blended[:, :, column_second] * column_weight
        best_value, best_index = best_prompt(slab)
        confidence[rows] = best_value
        if label_nothing:
            labels[rows] = 0
        else:
            labels[rows] = best_index.add_(1).mul_(best_value >= threshold)
        torch.maximum(max_confidence, slab.amax(dim=(1, 2)), out=max_confidence)
        if kept is not None:
            kept[:, rows] = slab
    return FrameMaps(labels, confidence, max_confidence, kept)
