"""
Camera frame to CLIPSeg input, in torch on the model's device. No ROS.
"""

from clipseg_ros.core.cuda_graphs import PinnedUpload
from clipseg_ros.core.model_loading import PreprocessConfig
import numpy as np
import torch
from torch.nn.functional import interpolate


class FramePreprocessor:
    """(H, W, 3) uint8 RGB frames to (1, 3, r, r) normalised model input on ``device``."""

    def __init__(self, config: PreprocessConfig, device: torch.device,
                 dtype: torch.dtype) -> None:
        self._config = config
        self._dtype = dtype
        self._mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
        self._upload = PinnedUpload(device)

    def __call__(self, image_rgb: np.ndarray, size: int, pinned: bool) -> torch.Tensor:
        """
        Bilinear resize to size x size (aspect not kept, antialiased when shrinking), rescale
        and normalise with the processor's constants. ``pinned``: upload through the pinned
        buffer (one frame of a batch may use it).
        """
        frame = self._upload(image_rgb, pinned)
        height, width = frame.shape[:2]
        # Resize in float32 whatever the model dtype: it is cheap and keeps half-precision
        # rounding out of the interpolation; the result is cast once at the end.
        pixels = frame.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        if (height, width) != (size, size):
            pixels = interpolate(pixels, size=(size, size), mode='bilinear',
                                 align_corners=False,
                                 antialias=height > size or width > size)
        pixels = (pixels * self._config.rescale_factor - self._mean) / self._std
        return pixels.to(self._dtype)

    def clear(self) -> None:
        """Free the pinned upload buffer."""
        self._upload.clear()
