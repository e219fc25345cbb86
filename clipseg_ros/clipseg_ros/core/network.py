"""
CLIPSeg's forward pass with one vision-encoder pass for N prompts. torch + transformers, no ROS.

The vision encoder does not depend on the prompt (FiLM conditions only the decoder), so it runs
once per frame and only up to the last layer the decoder reads; the decoder then takes all
prompt embeddings as one batch. transformers' own forward refuses one image with N prompts.
"""

import inspect
from typing import Any

from clipseg_ros.core.cuda_graphs import CudaGraphCache
from clipseg_ros.core.model_loading import ModelLoadError
import torch


class SharedEncoderNetwork:
    """(B, 3, r, r) pixels and (N, D) prompt embeddings in, (B, N, r, r) float32 probabilities
    out: each of B frames (one per camera, say) decoded for every prompt."""

    def __init__(self, model: Any, model_name: str, use_cuda_graphs: bool) -> None:
        self.model = model
        config = model.config
        self.patch_size = int(config.vision_config.patch_size)
        layers = model.clip.vision_model.encoder.layers
        self._extract_layers = tuple(int(i) for i in config.extract_layers)
        if not self._extract_layers or \
                not all(0 <= i < len(layers) for i in self._extract_layers):
            raise ModelLoadError(
                f'{model_name}: extract_layers {self._extract_layers} must index the '
                f'{len(layers)} vision encoder layers')
        # hidden_states[i + 1] in transformers is the output of encoder layer i, so layers
        # after the last extracted one never influence the decoder.
        self.layers_run = max(self._extract_layers) + 1
        # Releases before 5.1 take a causal mask as a third positional argument (None for the
        # vision encoder) and may return a tuple.
        takes_causal_mask = 'causal_attention_mask' in inspect.signature(
            layers[0].forward).parameters
        self._layer_masks = (None, None) if takes_causal_mask else (None,)
        # Position embeddings interpolated for the current input side (see _update_positions).
        self._positions: torch.Tensor | None = None
        self._positions_size = 0
        self.graphs = CudaGraphCache(self._forward, enabled=use_cuda_graphs)

    def probabilities(self, pixel_values: torch.Tensor,
                      embeddings: torch.Tensor) -> torch.Tensor:
        """Return (B, N, r, r) float32 probabilities of B frames for N prompt embeddings."""
        self._update_positions(pixel_values.shape[-1])
        return self.graphs(pixel_values, embeddings)

    def prepare(self, size: int) -> None:
        """Have what a size x size input needs ready (the interpolated positions)."""
        self._update_positions(size)

    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Run the vision encoder up to the last extracted layer; return its activations."""
        vision = self.model.clip.vision_model
        # The same operations as vision.embeddings(pixel_values, interpolate_pos_encoding=True),
        # with the interpolated position embeddings taken from the per-size cache.
        stem = vision.embeddings
        patches = stem.patch_embedding(pixel_values.to(stem.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        classes = stem.class_embedding.expand(pixel_values.shape[0], 1, -1)
        hidden = torch.cat([classes, patches], dim=1) + self._positions
        hidden = vision.pre_layrnorm(hidden)
        kept = {}
        for index, layer in enumerate(vision.encoder.layers[:self.layers_run]):
            hidden = layer(hidden, *self._layer_masks)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if index in self._extract_layers:
                kept[index] = hidden
        return [kept[index] for index in self._extract_layers]

    def decode(self, activations: list[torch.Tensor],
               embeddings: torch.Tensor) -> torch.Tensor:
        """Return (B, N, r, r) float32 probabilities from B frames' activations."""
        frames, count = activations[0].shape[0], embeddings.shape[0]
        # expand() shares each frame's activations across the N prompts without a copy (a
        # copy is made only where B > 1 needs frame-major rows).
        shared = [a.unsqueeze(1).expand(-1, count, -1, -1).reshape(frames * count, *a.shape[1:])
                  for a in activations]
        conditional = embeddings.repeat(frames, 1) if frames > 1 else embeddings
        logits = self.model.decoder(shared, conditional).logits
        # The decoder squeezes its channel dimension; pin the shape down for any B, N. The
        # sigmoid runs in float32: in half precision it rounds to exactly 1.0 from a logit of
        # about 8.
        logits = logits.reshape(frames, count, logits.shape[-2], logits.shape[-1])
        return torch.sigmoid(logits.to(torch.float32))

    def _forward(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(pixel_values), embeddings)

    def _update_positions(self, size: int) -> None:
        """
        Interpolate the position embeddings for a size x size input, once per size.

        transformers re-interpolates them (bicubic) on every forward, which dominated a
        float16 frame on the GPU (docs/results.md, "GPU"). Done here, outside the CUDA graph, whose
        recorded inputs change only with the input size (which also changes its key).
        """
        if self._positions is not None and self._positions_size == size:
            return
        stem = self.model.clip.vision_model.embeddings
        tokens = (size // self.patch_size) ** 2 + 1
        template = stem.position_embedding.weight.new_empty(1, tokens, stem.embed_dim)
        self._positions = stem.interpolate_pos_encoding(template, size, size)
        self._positions_size = size

    def forget_shapes(self) -> None:
        """Drop what depends on the input size (graphs, positions)."""
        self.graphs.clear()
        self._positions = None
