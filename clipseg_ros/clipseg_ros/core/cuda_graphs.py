"""
The GPU fast path: the network replayed as CUDA graphs (one per input shape, least recently
used dropped), and frames uploaded through pinned host memory. torch, no ROS.
"""

from collections import OrderedDict
import logging
from collections.abc import Callable

import numpy as np
import torch

_LOGGER = logging.getLogger(__name__)
# Graphs kept, one per (frames, input size, prompt count): the camera stream's (batches of
# one to several cameras) and, say, a ~/segment call's one-off prompts, without recapturing
# each time they alternate.
CUDA_GRAPH_CACHE_SIZE = 8

TwoInputFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CudaGraphRunner:
    """Replays one captured CUDA graph of ``fn`` for fixed input shapes."""

    def __init__(self, fn: TwoInputFunction, first: torch.Tensor, second: torch.Tensor) -> None:
        self._first = first.clone()
        self._second = second.clone()
        # Warm-up on a side stream, as capture requires (lazy inits, allocator pools).
        stream = torch.cuda.Stream(device=first.device)
        stream.wait_stream(torch.cuda.current_stream(first.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(self._first, self._second)
        torch.cuda.current_stream(first.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._output = fn(self._first, self._second)

    def __call__(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        self._first.copy_(first)
        self._second.copy_(second)
        self._graph.replay()
        # Overwritten by the next replay; the caller consumes it under the engine lock.
        return self._output


class CudaGraphCache:
    """
    Runs ``fn`` through a captured graph per input shape; eagerly once capture has failed.

    The caller serialises calls (the engine lock).
    """

    def __init__(self, fn: TwoInputFunction, enabled: bool) -> None:
        self._fn = fn
        self.enabled = enabled
        self._graphs: OrderedDict[tuple, CudaGraphRunner] = OrderedDict()

    def __call__(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._fn(first, second)
        try:
            key = (tuple(first.shape), tuple(second.shape))
            graph = self._graphs.get(key)
            if graph is None:
                if len(self._graphs) >= CUDA_GRAPH_CACHE_SIZE:
                    self._graphs.popitem(last=False)
                graph = CudaGraphRunner(self._fn, first, second)
                self._graphs[key] = graph
            self._graphs.move_to_end(key)
            return graph(first, second)
        except Exception as exc:  # noqa: B902 - any capture failure: fall back for good
            _LOGGER.warning('CUDA graph capture failed (%s: %s); running eagerly',
                            type(exc).__name__, exc)
            self.clear()
            self.enabled = False
        return self._fn(first, second)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph (a new input size, or the model released)."""
        self._graphs.clear()


class PinnedUpload:
    """Copies uint8 frames to a device, through one reused pinned buffer on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._pinned: torch.Tensor | None = None

    def __call__(self, image: np.ndarray, pinned: bool) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(image))
        if self._device.type != 'cuda':
            return host
        if not pinned:
            return host.to(self._device)
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        # Safe to refill: the previous frame's upload finished at that frame's final sync.
        self._pinned.copy_(host)
        return self._pinned.to(self._device, non_blocking=True)

    def clear(self) -> None:
        self._pinned = None
