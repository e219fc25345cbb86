"""
Write a tiny, randomly initialised CLIPSeg model that needs no download.

The folder it writes has the same layout as a ``save_pretrained`` copy of
``CIDAS/clipseg-rd64-refined`` (``config.json``, ``model.safetensors``, a CLIP tokenizer and
``preprocessor_config.json``), so tests and demos exercise the real loading path offline.
Its architecture is the real one (patch size 16, 224-pixel position grid that gets
interpolated at 352, complex transposed convolution); only the widths and depths are small.

Command line: ``python -m clipseg_ros.tools.tiny_model OUT_DIR [--seed N]``.
"""

import argparse
import json
from pathlib import Path
import sys
from collections.abc import Sequence

import torch
from torch import nn
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPTokenizer

BOS_TOKEN = '<|startoftext|>'
EOS_TOKEN = '<|endoftext|>'
WORD_END = '</w>'

# ImageNet statistics and 352x352 input, as in the real checkpoint's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    'do_normalize': True,
    'do_rescale': True,
    'do_resize': True,
    'image_mean': [0.485, 0.456, 0.406],
    'image_processor_type': 'ViTImageProcessor',
    'image_std': [0.229, 0.224, 0.225],
    'processor_class': 'CLIPSegProcessor',
    'resample': 2,
    'rescale_factor': 1.0 / 255.0,
    'size': {'height': 352, 'width': 352},
}

# Whole-word tokens for a few words, so the merge machinery of the BPE model is exercised too.
# The prompts the benchmarks segment with (the first N of them for N prompts): up to 13 things
# a robot looks for indoors.
BENCHMARK_PROMPTS = (
    'a person', 'a chair', 'a table', 'a cup', 'a bottle', 'a laptop', 'a door', 'a window',
    'a potted plant', 'a backpack', 'a robot arm', 'a cardboard box', 'the floor',
)
_MERGED_WORDS = ('a', 'the', 'cat', 'dog', 'person', 'car', 'cup', 'chair', 'photo', 'of')


def _byte_alphabet() -> list[str]:
    """
    Return the 256 printable characters that CLIP's byte-level BPE uses for the bytes 0..255.

    Printable Latin-1 bytes stand for themselves; the others are moved to code points from
    256 upwards, in byte order, so that every byte has a visible, non-space symbol.
    """
    # '!'..'~', then the Latin-1 ranges 0xA1..0xAC and 0xAE..0xFF (soft hyphen excluded).
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols = []
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + byte - sum(1 for b in printable if b < byte)))
    return symbols


def build_vocab(
    words: Sequence[str] = _MERGED_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """
    Build a small CLIP-style BPE vocabulary and merge list.

    Every byte appears both as a word-inner symbol and with the ``</w>`` word-end suffix, so any
    text tokenizes without unknown tokens; merges build whole-word tokens for ``words`` (lower
    case, no spaces). The special tokens come last, so the end-of-text token has the highest id,
    as in CLIP.
    """
    alphabet = _byte_alphabet()
    tokens = list(alphabet) + [symbol + WORD_END for symbol in alphabet]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + WORD_END]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = (current, piece)
            current = current + piece
            if merge not in merges:
                merges.append(merge)
            if current not in known:
                known.add(current)
                tokens.append(current)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tokenizer(words: Sequence[str] = _MERGED_WORDS) -> CLIPTokenizer:
    """Return a CLIP tokenizer over the small vocabulary of :func:`build_vocab` for ``words``."""
    vocab, merges = build_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_config(tokenizer: CLIPTokenizer) -> CLIPSegConfig:
    """Return a small CLIPSeg configuration of the real architecture family."""
    text_config = {
        'vocab_size': len(tokenizer),
        'hidden_size': 32,
        'intermediate_size': 64,
        'num_hidden_layers': 2,
        'num_attention_heads': 2,
        'max_position_embeddings': 77,
        'bos_token_id': tokenizer.bos_token_id,
        'eos_token_id': tokenizer.eos_token_id,
        'pad_token_id': tokenizer.pad_token_id,
    }
    vision_config = {
        'hidden_size': 48,
        'intermediate_size': 96,
        # One layer more than the decoder reads, so tests see that the engine skips it.
        'num_hidden_layers': 5,
        'num_attention_heads': 2,
        'patch_size': 16,
        'image_size': 224,
    }
    return CLIPSegConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=32,
        extract_layers=(1, 2, 3),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
    )


def _spread_decoder_outputs(model: CLIPSegForImageSegmentation) -> None:
    """
    Re-initialise the decoder so that random logits have a standard deviation of about 1.

    With transformers' unit-variance initialisation the logits reach several hundred, which
    saturates every probability at exactly 0 or 1; tests of thresholds need values spread over
    (0, 1) as a trained model gives. PyTorch's fan-in initialisation makes them tiny instead,
    hence the gain on the last layer.
    """
    for module in model.decoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()
    with torch.no_grad():
        model.decoder.transposed_convolution[-1].weight.mul_(32.0)


def full_size_config(tokenizer: CLIPTokenizer) -> CLIPSegConfig:
    """
    Return the configuration of ``CIDAS/clipseg-rd64-refined`` (150.7M parameters).

    The text model's special-token ids are those of ``tokenizer`` (the text model pools at the
    end-of-text token); the amount of computation is that of the real model.
    """
    config = CLIPSegConfig(vision_config={'patch_size': 16},
                           use_complex_transposed_convolution=True)
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    return config


def build_random_model(size: str = 'tiny',
                       seed: int = 0) -> tuple[CLIPSegForImageSegmentation, CLIPTokenizer]:
    """
    Return a random CLIPSeg in eval mode and its tokenizer: ``size`` 'tiny' or 'full'.

    The weights depend only on ``seed``; the global torch random state is left untouched.
    """
    if size not in ('tiny', 'full'):
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer) if size == 'tiny' else full_size_config(tokenizer)
    # fork_rng keeps callers' random streams reproducible while the init is seeded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(config)
        _spread_decoder_outputs(model)
    return model.eval(), tokenizer


def write_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """
    Write a tiny random CLIPSeg model, its tokenizer and preprocessor config to ``out_dir``.

    The weights depend only on ``seed``; the global torch random state is left untouched.
    Returns the folder, ready for ``ClipSegEngine(model=str(folder))`` and for
    ``CLIPSegForImageSegmentation.from_pretrained(folder)``.
    """
    return write_random_model(out_dir, size='tiny', seed=seed)


def write_random_model(out_dir: str | Path, size: str = 'tiny', seed: int = 0) -> Path:
    """
    Write a random CLIPSeg folder: ``size`` 'tiny' (tests, demo) or 'full' (benchmarks).

    'full' is the architecture of ``CIDAS/clipseg-rd64-refined`` (about 600 MB on disk):
    latency does not depend on weight values, so it stands in for the real weights in speed
    measurements.
    """
    model, tokenizer = build_random_model(size, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Written as JSON because the image processor classes of transformers 5 need torchvision
    # or PIL just to be instantiated; the file is what the processor would have written.
    with open(out / 'preprocessor_config.json', 'w', encoding='utf-8') as stream:
        json.dump(PREPROCESSOR_CONFIG, stream, indent=2)
        stream.write('\n')
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the tiny model into the given folder."""
    parser = argparse.ArgumentParser(
        description='Write a tiny random CLIPSeg model (offline stand-in for '
                    'CIDAS/clipseg-rd64-refined).')
    parser.add_argument('out_dir', help='folder to write (created if missing)')
    parser.add_argument('--seed', type=int, default=0, help='random seed for the weights')
    parser.add_argument('--size', choices=['tiny', 'full'], default='tiny',
                        help='tiny (tests, demo) or full (the real architecture, benchmarks)')
    args = parser.parse_args(argv)
    folder = write_random_model(args.out_dir, size=args.size, seed=args.seed)
    print(f'wrote {args.size} random CLIPSeg model to {folder}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
