#!/usr/bin/env python3
"""
Train the miniature CLIPSeg (``clipseg_shapes_mini``) from scratch on synthetic tabletop scenes.

CPU only, seeded, one process: the scenes of :mod:`clipseg_ros.tools.scenes` are rendered once
into an in-memory cache (already resized to the model's input, as the engine would), then a
small ``CLIPSegForImageSegmentation`` is trained on them with binary cross-entropy on the masks,
CLIPSeg's loss, with three kinds of prompt mixed in every batch:

* text naming an object in the scene, in several phrasings ('red circle', 'the red circle',
  'a photo of a red circle', ...);
* a support image: another scene holding an object of the same kind, engineered into a prompt
  image by the package's own :func:`clipseg_ros.core.visual_prompt.engineer_visual_prompt` (so the
  one-shot path is trained as the engine uses it), sometimes blended with the text embedding as
  the engine's ``image_prompt(text=...)`` does;
* negatives: text or a support image of a kind absent from the scene, with an empty target.

Most training scenes are made to hold look-alikes (two shapes of one colour, or one shape in
two colours), and the pixels of the objects a prompt does not name can weigh more in the mask
loss (``--lookalike-weight``): telling a red circle from a red square is what the model learns
last.

Two auxiliary losses, used in training only (nothing of them is saved): a linear read-out of
each query patch's kind from the deepest encoder layer the decoder reads (shape is an
arrangement of patches, which a from-scratch encoder otherwise learns long after colour), and a
pull of each support-image embedding towards its kind's text embedding. The vision position
embeddings start as 2D sines and cosines; a share of the query images is cropped to part of the
frame, so objects are seen larger too.

Each query image is encoded once and decoded for several prompts, as the engine does, so one
encoder pass serves several masks. Writes a ``save_pretrained`` folder that
``ClipSegEngine(model=FOLDER, resolution=SIZE)`` loads.

Usage: ``python scripts/train_miniature.py OUT_DIR [--steps N] [--scenes N] ...`` (defaults are
the settings of the shipped model; see its MODEL_CARD.md).
"""

import argparse
from dataclasses import asdict, dataclass, fields
import json
import math
from multiprocessing import get_context
import os
from pathlib import Path
import sys
import time

import cv2
import numpy as np

# The package sources, for a checkout that has not been built and sourced.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation  # noqa: E402

from clipseg_ros.core.visual_prompt import engineer_visual_prompt  # noqa: E402
from clipseg_ros.tools.scenes import (  # noqa: E402
    all_kinds, COLOURS, phrase, render_scene, SHAPES)
from clipseg_ros.tools.tiny_model import build_tokenizer, PREPROCESSOR_CONFIG  # noqa: E402

# Whole-word tokens for the vocabulary; 'star' before 'table' so that 'ta' does not split it.
WORDS = ('star', 'triangle', 'circle', 'square', 'yellow', 'green', 'blue', 'red', 'table',
         'photo', 'the', 'of', 'on', 'a')
KINDS = all_kinds(SHAPES, COLOURS)
MEAN = np.array(PREPROCESSOR_CONFIG['image_mean'], dtype=np.float32)
STD = np.array(PREPROCESSOR_CONFIG['image_std'], dtype=np.float32)
# Seed ranges: training scenes, the validation scenes watched while training, and the scenes of
# scripts/eval_miniature.py (never trained on).
TRAIN_SEED_BASE = 1_000_000
VALIDATION_SEED_BASE = 8_000_000
EVAL_SEED_BASE = 9_000_000


@dataclass
class Settings:
    """Everything that decides the trained weights."""

    seed: int = 0
    size: int = 128               # square input side, pixels
    patch: int = 8
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    extract_layers: tuple[int, ...] = (1, 2, 3)
    reduce_dim: int = 64
    decoder_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64
    max_text_tokens: int = 32
    complex_decoder: bool = True
    scenes: int = 5000            # training scenes in the cache
    wide_share: float = 0.2       # share of 16:9 frames (the rest 4:3)
    render_width: int = 320       # 4:3 frames are rendered this wide, 16:9 ones 1.2x as wide
    steps: int = 2400
    batch: int = 16               # query images per step
    prompts_per_image: int = 4
    supports: int = 8             # support images (kinds) per step
    support_share: float = 0.7    # of prompts whose kind has a support image this step
    blend_share: float = 0.1      # of support prompts blended with their text
    negative_share: float = 0.3
    near_negative_share: float = 0.7  # of negatives sharing a shape or colour with the scene
    confuser_share: float = 0.6   # of training scenes made to hold look-alike kinds
    same_colour_share: float = 0.6  # of those look-alike pairs that share a colour (else shape)
    lookalike_weight: float = 1.0  # mask-loss weight of the pixels of objects not named
    align_weight: float = 0.2     # auxiliary loss: support embedding -> its kind's text
    token_weight: float = 0.5     # auxiliary loss: kind of each query patch (training only)
    token_focus: float = 0.0      # extra weight of object patches in that loss (0 = uniform)
    position_init: float = 0.7    # scale of 2D sine position embeddings at init (0 = CLIP's)
    local_attention_init: float = 0.0  # vision q/k projections start as this x identity
    zoom_share: float = 0.3       # of query images cropped to part of the frame
    zoom_min: float = 0.6         # smallest crop side, as a share of the frame's
    lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.05
    target_gamma: float = 1.737   # soft target = coverage ** gamma (see MODEL_CARD.md)
    dice_weight: float = 0.0
    threads: int = 1              # torch threads; the shipped model was trained with 1


# ------------------------------------------------------------------------------ data


def _resize_like_engine(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize as ClipSegEngine._preprocess does (bilinear, antialiased), rounded to uint8."""
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    pixels = F.interpolate(pixels, size=(size, size), mode='bilinear', align_corners=False,
                           antialias=True)
    return pixels[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def output_side(settings: Settings) -> int:
    """Side of the decoder's logit map for the settings."""
    if settings.complex_decoder:
        return settings.size // settings.patch * (settings.patch // 4) ** 2
    return settings.size


def confusers(seed: int, share: float, same_colour: float) -> list[tuple[str, str]]:
    """
    Kinds a training scene must hold so that look-alikes meet: two shapes of one colour (a
    ``same_colour`` share of them), or one shape in two colours (``share`` of the scenes; the
    others are left to chance).
    """
    rng = np.random.default_rng([seed, 7])
    if rng.random() >= share:
        return []
    shapes = [str(v) for v in rng.choice(SHAPES, 2, replace=False)]
    colours = [str(v) for v in rng.choice(COLOURS, 2, replace=False)]
    if rng.random() < same_colour:
        return [(shapes[0], colours[0]), (shapes[1], colours[0])]
    return [(shapes[0], colours[0]), (shapes[0], colours[1])]


def render_item(args: tuple[int, int, int, int, float, float]) -> dict:
    """
    Render one scene and keep what training needs (runs in worker processes): the image
    resized to a square ``side`` (twice the model input, so that zoomed crops stay sharp) and
    each object's mask at that size, bit-packed.
    """
    seed, width, height, side, confuser_share, same_colour_share = args
    torch.set_num_threads(1)
    scene = render_scene(seed, width, height,
                         include=confusers(seed, confuser_share, same_colour_share))
    kinds = np.array([KINDS.index(obj.kind) for obj in scene.objects], dtype=np.int8)
    masks = np.stack([cv2.resize(obj.mask.astype(np.float32), (side, side),
                                 interpolation=cv2.INTER_AREA) >= 0.5 for obj in scene.objects])
    return {'image': _resize_like_engine(scene.rgb, side), 'kinds': kinds,
            'masks': np.packbits(masks.reshape(len(kinds), -1), axis=1)}


def frame_size(settings: Settings, rng: np.random.Generator) -> tuple[int, int]:
    """Return the (width, height) of the next training frame: 4:3 mostly, some 16:9."""
    width = settings.render_width
    if rng.random() < settings.wide_share:
        wide = int(round(width * 1.2 / 16)) * 16
        return wide, wide * 9 // 16
    return width, width * 3 // 4


class SceneCache:
    """Training scenes, resized to the model input, with per-object targets."""

    def __init__(self, items: list[dict]) -> None:
        self.images = np.stack([item['image'] for item in items])
        self.side = self.images.shape[1]
        self.kinds = [item['kinds'] for item in items]
        self.packed_masks = [item['masks'] for item in items]
        # For each kind, the (scene, object) pairs that show it: the support images.
        self.holders: list[list[tuple[int, int]]] = [[] for _ in KINDS]
        for scene, kinds in enumerate(self.kinds):
            for index, kind in enumerate(kinds):
                self.holders[int(kind)].append((scene, index))

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, scene: int) -> np.ndarray:
        """Return the (objects, side, side) bool masks of a scene."""
        packed = self.packed_masks[scene]
        return np.unpackbits(packed, axis=1, count=self.side * self.side).reshape(
            len(packed), self.side, self.side).astype(bool)


def build_cache(settings: Settings, seeds: list[int], log=print,
                workers: int = 2) -> SceneCache:
    """
    Render ``seeds`` in ``workers`` processes, or in this one for ``workers`` <= 1 (in order
    either way, so the cache is the same).
    """
    rng = np.random.default_rng(settings.seed + 17)
    jobs = [(seed, *frame_size(settings, rng), 2 * settings.size, settings.confuser_share,
             settings.same_colour_share) for seed in seeds]
    start = time.time()
    items = []

    def collect(rendered) -> None:
        for index, item in enumerate(rendered):
            items.append(item)
            if (index + 1) % 1000 == 0:
                log(f'rendered {index + 1}/{len(jobs)} scenes, {time.time() - start:.0f} s')

    if workers <= 1:
        collect(map(render_item, jobs))
    else:
        with get_context('fork').Pool(workers) as pool:
            collect(pool.imap(render_item, jobs, chunksize=16))
    return SceneCache(items)


def normalise(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 or float RGB -> (N, 3, S, S) float32 model input."""
    scaled = (np.asarray(images, dtype=np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Photometric augmentation of one uint8 image: exposure, contrast, white balance, noise."""
    out = image.astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.75, 1.25)
    out *= 1.0 + rng.normal(0.0, 0.04, 3).astype(np.float32)
    out += rng.normal(0.0, rng.uniform(0.0, 4.0), out.shape).astype(np.float32)
    return np.clip(out, 0.0, 255.0)


def flip(array: np.ndarray, code: int, axes: tuple[int, int]) -> np.ndarray:
    """Flip along rows (bit 1) and/or columns (bit 2) of ``code``; axes = (row, column) axes."""
    if code & 1:
        array = np.flip(array, axes[0])
    if code & 2:
        array = np.flip(array, axes[1])
    return array


# ------------------------------------------------------------------------------ model


def build_model(settings: Settings):
    """Return a freshly initialised model and its tokenizer (seeded by the caller)."""
    tokenizer = build_tokenizer(WORDS)
    text_config = {
        'vocab_size': len(tokenizer),
        'hidden_size': settings.text_hidden,
        'intermediate_size': settings.text_hidden * 4,
        'num_hidden_layers': settings.text_layers,
        'num_attention_heads': settings.text_heads,
        'max_position_embeddings': settings.max_text_tokens,
        'bos_token_id': tokenizer.bos_token_id,
        'eos_token_id': tokenizer.eos_token_id,
        'pad_token_id': tokenizer.pad_token_id,
    }
    vision_config = {
        'hidden_size': settings.vision_hidden,
        'intermediate_size': settings.vision_hidden * 4,
        'num_hidden_layers': settings.vision_layers,
        'num_attention_heads': settings.vision_heads,
        'patch_size': settings.patch,
        'image_size': settings.size,
    }
    config = CLIPSegConfig(
        text_config=text_config, vision_config=vision_config,
        projection_dim=settings.projection_dim, extract_layers=settings.extract_layers,
        reduce_dim=settings.reduce_dim, decoder_num_attention_heads=settings.decoder_heads,
        decoder_intermediate_size=settings.reduce_dim * 2,
        use_complex_transposed_convolution=settings.complex_decoder)
    model = CLIPSegForImageSegmentation(config)
    # PyTorch's fan-in initialisation for the decoder keeps the first logits small; the last
    # bias starts at the background's log-odds so that early training is not all background.
    for module in model.decoder.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    last = model.decoder.transposed_convolution
    last = last[-1] if isinstance(last, torch.nn.Sequential) else last
    torch.nn.init.constant_(last.bias, -3.0)
    if settings.position_init > 0.0:
        stem = model.clip.vision_model.embeddings
        with torch.no_grad():
            stem.position_embedding.weight.copy_(grid_positions(
                settings.size // settings.patch, settings.vision_hidden, settings.position_init))
    if settings.local_attention_init > 0.0:
        # Queries and keys start as the (normalised) token itself: attention then favours
        # tokens that look alike and lie close (the sine position terms), i.e. the rest of the
        # same object, which is what a token needs to know its object's shape.
        with torch.no_grad():
            for layer in model.clip.vision_model.encoder.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    projection.weight.copy_(settings.local_attention_init * torch.eye(
                        settings.vision_hidden))
                    projection.bias.zero_()
    return model, tokenizer


def grid_positions(grid: int, dim: int, scale: float) -> torch.Tensor:
    """
    Return (grid * grid + 1, dim) position embeddings: 2D sines and cosines, class token zero.

    CLIP's initialisation gives position embeddings a standard deviation of 0.02, far below
    the patch features', so a ViT trained from scratch starts blind to where its patches are,
    and learns colour (a per-patch feature) long before shape (an arrangement of patches).
    Starting from sines and cosines of the row and column (still trained) fixes that.
    """
    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing='ij')
    parts = []
    for coordinate in (rows.reshape(-1), cols.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)
    table = torch.cat([table, torch.zeros(len(table), dim - table.shape[1], dtype=table.dtype)],
                      dim=1)
    table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])
    return (scale * table).to(torch.float32)


def encode_queries(model, pixels: torch.Tensor, settings: Settings) -> list[torch.Tensor]:
    """Vision encoder activations at the decoder's layers (what the engine computes)."""
    vision = model.clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    kept = []
    for index, layer in enumerate(vision.encoder.layers[:max(settings.extract_layers) + 1]):
        hidden = layer(hidden, None)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if index in settings.extract_layers:
            kept.append(hidden)
    return kept


def decode(model, activations: list[torch.Tensor], cond: torch.Tensor,
           repeats: int) -> torch.Tensor:
    """
    ``model.decoder(activations, cond).logits`` for ``repeats`` prompts per image.

    The same operations as CLIPSegDecoder.forward, except that each image's activations are
    reduced once and then repeated for its prompts (the reduction does not depend on the
    prompt), which saves a third of the decoder's work in training.
    """
    decoder = model.decoder
    output = None
    for index, (activation, layer, reduce) in enumerate(
            zip(activations[::-1], decoder.layers, decoder.reduces)):
        reduced = reduce(activation).repeat_interleave(repeats, dim=0)
        output = reduced if output is None else reduced + output
        if index == decoder.conditional_layer:
            output = decoder.film_mul(cond)[:, None] * output + decoder.film_add(cond)[:, None]
        output = layer(output, attention_mask=None)
        if isinstance(output, tuple):
            output = output[0]
    output = output[:, 1:, :].transpose(1, 2)
    side = int(math.sqrt(output.shape[2]))
    output = output.reshape(output.shape[0], output.shape[1], side, side)
    return decoder.transposed_convolution(output).squeeze(1)


def text_features(model, tokenizer, texts: list[str], settings: Settings) -> torch.Tensor:
    """Text embeddings as the engine computes them, with gradients."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=settings.max_text_tokens,
                      return_tensors='pt')
    return model.clip.get_text_features(input_ids=batch['input_ids'],
                                        attention_mask=batch['attention_mask']).pooler_output


def support_prompt(cache: SceneCache, scene: int, index: int, size: int,
                   rng: np.random.Generator | None) -> np.ndarray:
    """The engineered (3, S, S) prompt image of object ``index`` of cache scene ``scene``."""
    image = cache.images[scene]
    mask = cache.masks(scene)[index]
    if rng is not None:
        code = int(rng.integers(4))
        image = np.clip(np.rint(jitter(rng, flip(image, code, (0, 1)))), 0, 255).astype(np.uint8)
        mask = np.ascontiguousarray(flip(mask, code, (0, 1)))
    return engineer_visual_prompt(np.ascontiguousarray(image), mask, size,
                                  mean=PREPROCESSOR_CONFIG['image_mean'],
                                  std=PREPROCESSOR_CONFIG['image_std'],
                                  rescale_factor=PREPROCESSOR_CONFIG['rescale_factor'])


def lookalike_weights(coverage: np.ndarray, named: int, weight: float) -> np.ndarray:
    """
    Per-pixel mask-loss weights of one prompt: ``weight`` on the objects it does not name
    (``named`` = -1 for a negative), 1 on the table and the named object.

    The table is most of every frame and easy; the objects a prompt does not name are few
    pixels, and they are where a model that reads colour alone is wrong (a red square
    marked for 'red circle').
    """
    others = np.delete(coverage, named, axis=0) if named >= 0 else coverage
    share = np.clip(others.sum(axis=0), 0.0, 1.0) if len(others) else \
        np.zeros(coverage.shape[1:], dtype=np.float32)
    return (1.0 + (weight - 1.0) * share).astype(np.float32)


def sample_batch(cache: SceneCache, settings: Settings, rng: np.random.Generator) -> dict:
    """Draw query images, prompts (text, support, blended; positive or negative) and targets."""
    out = output_side(settings)
    scenes = rng.choice(len(cache), settings.batch, replace=False)
    images, targets, weights, slots, patch_kinds = [], [], [], [], []
    grid = settings.size // settings.patch
    for scene in scenes:
        image, masks = cache.images[scene], cache.masks(scene)
        if rng.random() < settings.zoom_share:
            # Zoom in on part of the frame: objects appear larger, as in the support crops,
            # which is where shape is learned first.
            side = int(round(rng.uniform(settings.zoom_min, 1.0) * cache.side))
            top, left = rng.integers(0, cache.side - side + 1, size=2)
            image = image[top:top + side, left:left + side]
            masks = masks[:, top:top + side, left:left + side]
        image = _resize_like_engine(np.ascontiguousarray(image), settings.size)
        coverage = np.stack([cv2.resize(mask.astype(np.float32), (out, out),
                                        interpolation=cv2.INTER_AREA) for mask in masks])
        # Objects cut out of the crop are absent from this sample.
        seen = coverage.sum(axis=(1, 2)) >= 1.0
        if not seen.any():
            seen[int(coverage.sum(axis=(1, 2)).argmax())] = True
        present = [int(k) for k, keep in zip(cache.kinds[scene], seen) if keep]
        code = int(rng.integers(4))
        images.append(jitter(rng, flip(image, code, (0, 1))))
        coverage = flip(coverage[seen], code, (1, 2))
        # Share of each patch covered by each kind (class 0 = table): the token targets.
        pooled = coverage.reshape(len(present), grid, out // grid, grid, out // grid).mean(
            axis=(2, 4))
        shares = np.zeros((len(KINDS) + 1, grid, grid), dtype=np.float32)
        for index, kind in enumerate(present):
            shares[kind + 1] += pooled[index]
        shares[0] = np.clip(1.0 - shares[1:].sum(axis=0), 0.0, 1.0)
        patch_kinds.append(shares / shares.sum(axis=0, keepdims=True))
        order = list(rng.permutation(len(present)))
        for slot in range(settings.prompts_per_image):
            if rng.random() < settings.negative_share:
                absent = [k for k in range(len(KINDS)) if k not in present]
                # Most negatives share a shape or a colour with something in the scene.
                near = [k for k in absent if any(
                    KINDS[k][0] == KINDS[p][0] or KINDS[k][1] == KINDS[p][1] for p in present)]
                pool = near if near and rng.random() < settings.near_negative_share else absent
                slots.append(int(pool[int(rng.integers(len(pool)))]))
                targets.append(np.zeros((out, out), dtype=np.float32))
                named = -1
            else:
                index = int(order[slot % len(order)]) if slot < len(order) else \
                    int(rng.integers(len(present)))
                slots.append(present[index])
                targets.append(coverage[index] ** settings.target_gamma)
                named = index
            # Weight 1 is the plain mean; no weight maps are built for it.
            if settings.lookalike_weight != 1.0:
                weights.append(lookalike_weights(coverage, named, settings.lookalike_weight))
    # Support images for a random set of kinds this step, each from a random holder scene.
    support_kinds = [int(k) for k in rng.choice(len(KINDS), settings.supports, replace=False)]
    support_images, support_of = [], {}
    for kind in support_kinds:
        holders = cache.holders[kind]
        scene, index = holders[int(rng.integers(len(holders)))]
        support_of[kind] = len(support_images)
        support_images.append(support_prompt(cache, scene, index, settings.size, rng))
    texts, modes = [], []
    for kind in slots:
        texts.append(phrase(KINDS[kind], rng))
        if kind in support_of and rng.random() < settings.support_share:
            weight = rng.uniform(0.3, 0.7) if rng.random() < settings.blend_share else 0.0
            modes.append((support_of[kind], weight))
        else:
            modes.append((-1, 1.0))
    return {
        'pixels': torch.from_numpy(normalise(np.stack(images))),
        'targets': torch.from_numpy(np.stack(targets)),
        'weights': torch.from_numpy(np.stack(weights)) if weights else None,
        'texts': texts, 'modes': modes,
        'supports': torch.from_numpy(np.stack(support_images)),
        'support_kinds': torch.tensor(support_kinds),
        'patch_kinds': torch.from_numpy(np.stack(patch_kinds)),
    }


def conditional(model, tokenizer, batch: dict,
                settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per-slot conditional embeddings (text, support image, or a blend of both), and the
    auxiliary alignment loss of the support embeddings.

    The alignment loss classifies each support embedding among the canonical text embeddings
    of all kinds (cosine similarity, cross-entropy): it teaches the image encoder's pooled
    output what the kinds are and keeps image and text prompts in one space, so that what the
    decoder learns from either transfers to the other.
    """
    canonical = [phrase(kind) for kind in KINDS]
    unique = sorted(set(batch['texts']) | set(canonical))
    text = text_features(model, tokenizer, unique, settings)
    slot_text = text[[unique.index(t) for t in batch['texts']]]
    images = model.clip.get_image_features(pixel_values=batch['supports']).pooler_output
    rows = []
    for slot, (support, weight) in enumerate(batch['modes']):
        if support < 0:
            rows.append(slot_text[slot])
        else:
            rows.append((1.0 - weight) * images[support] + weight * slot_text[slot])
    kinds_text = F.normalize(text[[unique.index(t) for t in canonical]], dim=-1)
    similarity = F.normalize(images, dim=-1) @ kinds_text.T * 10.0
    align = F.cross_entropy(similarity, batch['support_kinds'])
    return torch.stack(rows), align


def token_loss(head: torch.nn.Linear, tokens: torch.Tensor, shares: torch.Tensor,
               focus: float = 0.0) -> torch.Tensor:
    """
    Cross-entropy of a linear read-out of the deepest decoder-input tokens against the kind
    shares of their patches.

    Deep supervision, for training only (the head is not saved): every object of every query
    image teaches the encoder what kind it is, where the mask loss teaches that only through
    the objects a prompt names, so shape, the harder half of a kind, is learned sooner. A
    ``focus`` > 0 weighs each patch by 1 + focus x its object share: most patches are table,
    which is learned first and then only dilutes the loss.
    """
    batch, classes, grid, _ = shares.shape
    logits = head(tokens[:, 1:]).reshape(batch, grid, grid, classes).permute(0, 3, 1, 2)
    per_patch = -(shares * F.log_softmax(logits, dim=1)).sum(dim=1)
    if focus == 0.0:
        return per_patch.mean()
    weights = 1.0 + focus * (1.0 - shares[:, 0])
    return (per_patch * weights).sum() / weights.sum()


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
            settings: Settings) -> torch.Tensor:
    """
    Binary cross-entropy with logits on the masks (look-alike pixels weighted when ``weights``
    is given), plus an optional soft Dice term.
    """
    if weights is None:
        loss = F.binary_cross_entropy_with_logits(logits, targets)
    else:
        loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
                * weights).sum() / weights.sum()
    if settings.dice_weight > 0.0:
        probs = torch.sigmoid(logits).flatten(1)
        flat = targets.flatten(1)
        positive = flat.sum(1) > 0
        if positive.any():
            inter = (probs * flat).sum(1)[positive]
            union = (probs.sum(1) + flat.sum(1))[positive]
            loss = loss + settings.dice_weight * (1.0 - (2.0 * inter + 1.0) / (union + 1.0)).mean()
    return loss


# ------------------------------------------------------------------------------ validation


class Validation:
    """A few held-out 640 x 480 scenes scored like scripts/eval_miniature.py, but in-process."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.scenes = [render_scene(VALIDATION_SEED_BASE + i, 640, 480) for i in range(count)]
        size = settings.size
        self.pixels = torch.from_numpy(normalise(np.stack(
            [_resize_like_engine(s.rgb, size) for s in self.scenes])))
        holders: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for i, scene in enumerate(self.scenes):
            for j, obj in enumerate(scene.objects):
                holders.setdefault(obj.kind, []).append((i, j))
        rng = np.random.default_rng(5)
        self.support_of = []
        for i, scene in enumerate(self.scenes):
            for j, obj in enumerate(scene.objects):
                others = [h for h in holders[obj.kind] if h[0] != i]
                self.support_of.append(others[int(rng.integers(len(others)))] if others else None)

    @torch.no_grad()
    def __call__(self, model, tokenizer) -> dict:
        settings = self.settings
        cfg = PREPROCESSOR_CONFIG
        model.eval()
        ious = {'text': [], 'support': []}
        empty = []
        pair = 0
        for i, scene in enumerate(self.scenes):
            activations = encode_queries(model, self.pixels[i:i + 1], settings)
            kinds = [obj.kind for obj in scene.objects]
            absent = [k for k in KINDS if k not in kinds][:2]
            texts = [phrase(k) for k in kinds + absent]
            conds = [text_features(model, tokenizer, texts, settings)]
            supports = []
            for j in range(len(kinds)):
                holder = self.support_of[pair + j]
                if holder is not None:
                    other = self.scenes[holder[0]]
                    supports.append(engineer_visual_prompt(
                        other.rgb, other.objects[holder[1]].mask, settings.size,
                        mean=cfg['image_mean'], std=cfg['image_std'],
                        rescale_factor=cfg['rescale_factor']))
            if supports:
                conds.append(model.clip.get_image_features(
                    pixel_values=torch.from_numpy(np.stack(supports))).pooler_output)
            cond = torch.cat(conds)
            logits = model.decoder([a.expand(len(cond), -1, -1) for a in activations],
                                   cond).logits.reshape(len(cond), 1, *([output_side(settings)]
                                                                        * 2))
            probs = F.interpolate(torch.sigmoid(logits), size=(480, 640), mode='bilinear',
                                  align_corners=False)[:, 0] >= 0.3
            probs = probs.numpy()
            for j, obj in enumerate(scene.objects):
                ious['text'].append(_iou(probs[j], obj.mask))
            for j in range(len(absent)):
                empty.append(not probs[len(kinds) + j].any())
            row = len(kinds) + len(absent)
            for j, obj in enumerate(scene.objects):
                if self.support_of[pair + j] is not None:
                    ious['support'].append(_iou(probs[row], obj.mask))
                    row += 1
            pair += len(kinds)
        model.train()
        return {'text_miou': float(np.mean(ious['text'])),
                'support_miou': float(np.mean(ious['support'])),
                'empty_rate': float(np.mean(empty))}


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


# ------------------------------------------------------------------------------ main


def write_model_folder(model, tokenizer, settings: Settings, out_dir: Path,
                       summary: dict) -> None:
    """Write the save_pretrained folder: weights, tokenizer, preprocessor config, settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    config = dict(PREPROCESSOR_CONFIG, size={'height': settings.size, 'width': settings.size})
    with open(out_dir / 'preprocessor_config.json', 'w', encoding='utf-8') as stream:
        json.dump(config, stream, indent=2)
        stream.write('\n')
    with open(out_dir / 'training.json', 'w', encoding='utf-8') as stream:
        json.dump({'settings': asdict(settings), **summary}, stream, indent=2)
        stream.write('\n')


def parse_args(argv: list[str] | None) -> tuple[Path, Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out_dir', type=Path, help='model folder to write')
    parser.add_argument('--validate-every', type=int, default=500,
                        help='steps between validation runs (0 = only at the end)')
    parser.add_argument('--validation-scenes', type=int, default=60)
    parser.add_argument('--checkpoints', action='store_true',
                        help='also write the model beside OUT_DIR at every validation')
    parser.add_argument('--workers', type=int, default=2,
                        help='processes rendering the scenes (no effect on the weights)')
    defaults = Settings()
    for item in fields(Settings):
        value = getattr(defaults, item.name)
        flag = '--' + item.name.replace('_', '-')
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ('1', 'true', 'yes'),
                                default=value)
        elif isinstance(value, tuple):
            parser.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(',')),
                                default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args(argv)
    settings = Settings(**{item.name: getattr(args, item.name) for item in fields(Settings)})
    return args.out_dir, settings, args


def train(settings: Settings, cache: SceneCache, validation: Validation, log=print,
          validate_every: int = 500, checkpoint=None) -> tuple[object, object, dict]:
    """
    Train a fresh model on ``cache``; return (model, tokenizer, summary). ``checkpoint(model,
    tokenizer, history, step)`` is called after each intermediate validation when given.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model, tokenizer = build_model(settings)
    model.train()
    head = torch.nn.Linear(settings.vision_hidden, len(KINDS) + 1)
    log(f'model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters')
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and 'embedding' not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2
                                                               and 'embedding' not in n)]
    optimiser = torch.optim.AdamW([{'params': decay, 'weight_decay': settings.weight_decay},
                                   {'params': no_decay + list(head.parameters()),
                                    'weight_decay': 0.0}],
                                  lr=settings.lr, betas=(0.9, 0.98))
    warmup = max(1, int(settings.warmup * settings.steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    train_start = time.time()
    # CPU seconds tell the cost on an idle machine when other work shares the cores.
    cpu_start = time.process_time()
    running = []
    history = []
    for step in range(settings.steps):
        batch = sample_batch(cache, settings, rng)
        activations = encode_queries(model, batch['pixels'], settings)
        cond, align = conditional(model, tokenizer, batch, settings)
        logits = decode(model, activations, cond, settings.prompts_per_image)
        logits = logits.reshape(batch['targets'].shape)
        mask_loss = loss_fn(logits, batch['targets'], batch['weights'], settings)
        tokens = token_loss(head, activations[-1], batch['patch_kinds'], settings.token_focus)
        loss = mask_loss + settings.align_weight * align + settings.token_weight * tokens
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), 1.0)
        optimiser.step()
        scheduler.step()
        running.append([float(mask_loss.detach()), float(align.detach()),
                        float(tokens.detach())])
        if (step + 1) % 100 == 0:
            rate = (time.time() - train_start) / (step + 1)
            cpu = (time.process_time() - cpu_start) / (step + 1)
            mask_mean, align_mean, token_mean = np.mean(running, axis=0)
            log(f'step {step + 1}/{settings.steps} loss: mask {mask_mean:.4f} '
                f'align {align_mean:.3f} tokens {token_mean:.3f}, '
                f'lr {scheduler.get_last_lr()[0]:.2e} {rate:.2f} s/step '
                f'({cpu:.2f} CPU s/step)')
            running = []
        if validate_every and (step + 1) % validate_every == 0 and step + 1 < settings.steps:
            scores = validation(model, tokenizer)
            history.append({'step': step + 1, **scores})
            log(f'validation at step {step + 1}: {scores}')
            if checkpoint is not None:
                checkpoint(model, tokenizer, history, step + 1)
    train_seconds = time.time() - train_start
    scores = validation(model, tokenizer)
    history.append({'step': settings.steps, **scores})
    log(f'final validation: {scores}')
    model.eval()
    summary = {'train_seconds': round(train_seconds, 1),
               'train_cpu_seconds': round(time.process_time() - cpu_start, 1),
               'validation': history, 'torch': torch.__version__,
               'cpu_count': os.cpu_count()}
    return model, tokenizer, summary


def main(argv: list[str] | None = None) -> int:
    out_dir, settings, options = parse_args(argv)
    torch.set_num_threads(settings.threads)
    start = time.time()

    def log(message: str) -> None:
        print(f'[{time.time() - start:7.1f} s] {message}', flush=True)

    def checkpoint(model, tokenizer, history, step) -> None:
        write_model_folder(model, tokenizer, settings,
                           out_dir.with_name(f'{out_dir.name}.step{step}'),
                           {'validation': history})

    log(f'settings: {asdict(settings)}')
    seeds = [TRAIN_SEED_BASE + settings.seed * 100_000 + i for i in range(settings.scenes)]
    cache = build_cache(settings, seeds, log, options.workers)
    log(f'cache: {len(cache)} scenes, {cache.images.nbytes / 1e6:.0f} MB of images')
    validation = Validation(settings, options.validation_scenes)
    model, tokenizer, summary = train(settings, cache, validation, log, options.validate_every,
                                      checkpoint=checkpoint if options.checkpoints else None)
    summary['total_seconds'] = round(time.time() - start, 1)
    write_model_folder(model, tokenizer, settings, out_dir, summary)
    log(f'wrote {out_dir} (training {summary["train_seconds"] / 60:.1f} min, '
        f'total {summary["total_seconds"] / 60:.1f} min)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
