"""
Benchmark the shared-encoder engine against the naive transformers CLIPSeg pipeline.

Both run the full-size CLIPSeg architecture (150.7M parameters, the one of
CIDAS/clipseg-rd64-refined) with random weights, built in memory, on a 640x480 frame:

* naive: per frame, CLIPSegProcessor on the frame and the texts, one full forward with the
  frame repeated once per prompt, sigmoid, resize of the maps to 640x480;
* engine: prompts embedded once, then ``ClipSegEngine.segment`` per frame (one encoder pass
  up to the last extracted layer, all prompts decoded as one batch, labels and confidence).

Naive and engine frames are timed alternately; the script prints per-prompt-count medians
and the engine/naive speed-up, and its last line is one JSON object.
Example: ``python bench/engine_bench.py --repeats 3 --prompts 1,4,13``.
"""

import argparse
import importlib.util
import json
from pathlib import Path
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

try:
    from clipseg_ros.core.engine import ClipSegEngine
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'clipseg_ros'))
    from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.tiny_model import (
    BENCHMARK_PROMPTS, build_random_model, PREPROCESSOR_CONFIG)
import numpy as np
import torch
from torch.nn.functional import interpolate
from transformers import CLIPSegForImageSegmentation

PROMPTS = BENCHMARK_PROMPTS
FRAME_HEIGHT, FRAME_WIDTH = 480, 640


def make_processor(tokenizer) -> tuple[Callable, str]:
    """
    Return ``(process(texts, images) -> dict of tensors, description)`` for the naive path.

    transformers 5 image processors need PIL or torchvision. Without either, a numpy + OpenCV
    stand-in does the same work per image (resize, rescale, normalise), so the naive timing
    still includes per-frame, per-prompt preprocessing.
    """
    if importlib.util.find_spec('PIL') is not None:
        from transformers import CLIPSegProcessor
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
        config = {k: v for k, v in PREPROCESSOR_CONFIG.items()
                  if k not in ('image_processor_type', 'processor_class')}
        processor = CLIPSegProcessor(image_processor=ViTImageProcessorPil(**config),
                                     tokenizer=tokenizer)

        def process(texts: list[str], images: list[np.ndarray]) -> dict:
            return dict(processor(text=texts, images=images, padding=True,
                                  return_tensors='pt'))
        return process, 'CLIPSegProcessor (PIL)'

    import cv2
    size = PREPROCESSOR_CONFIG['size']['height']
    scale = PREPROCESSOR_CONFIG['rescale_factor']
    mean = np.array(PREPROCESSOR_CONFIG['image_mean'], dtype=np.float32)
    std = np.array(PREPROCESSOR_CONFIG['image_std'], dtype=np.float32)

    def process(texts: list[str], images: list[np.ndarray]) -> dict:
        inputs = dict(tokenizer(texts, padding=True, return_tensors='pt'))
        pixels = [((cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
                    .astype(np.float32) * scale - mean) / std).transpose(2, 0, 1)
                  for image in images]
        inputs['pixel_values'] = torch.from_numpy(np.stack(pixels))
        return inputs
    return process, 'tokenizer + numpy/OpenCV stand-in for the image processor (no PIL)'


def naive_frame(model: CLIPSegForImageSegmentation, process: Callable, frame: np.ndarray,
                texts: list[str], device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Segment one frame the naive way; return (N, H, W) probabilities on the host."""
    count = len(texts)
    inputs = process(texts, [frame] * count)
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    inputs['pixel_values'] = inputs['pixel_values'].to(dtype)
    with torch.inference_mode():
        logits = model(**inputs).logits
        probabilities = torch.sigmoid(logits.reshape(count, *logits.shape[-2:])).float()
        probabilities = interpolate(probabilities.unsqueeze(0), size=frame.shape[:2],
                                    mode='bilinear', align_corners=False)[0]
        return probabilities.cpu().numpy()


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Return the wall time of one call, synchronising CUDA before and after."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_times(functions: Sequence[Callable[[], object]], device: torch.device,
                      warmup: int, repeats: int) -> list[list[float]]:
    """
    Return the wall times of each function, timed in turn, frame by frame.

    Alternating keeps slow spells of a shared machine from favouring one side.
    """
    for _ in range(warmup):
        for function in functions:
            function()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            times[index].append(timed(function, device))
    return times


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}')
    if not counts or not all(1 <= count <= len(PROMPTS) for count in counts):
        raise argparse.ArgumentTypeError(f'prompt counts must be in 1..{len(PROMPTS)}')
    return counts


ENCODER_GMACS = 45.8
DECODER_GMACS_PER_PROMPT = 0.58


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='timed frames per setting')
    parser.add_argument('--warmup', type=int, default=1, help='untimed frames per setting')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--dtype', default='auto', help='auto, float32, float16, bfloat16')
    parser.add_argument('--prompts', type=parse_counts, default=[1, 4, 13],
                        help='comma-separated prompt counts, e.g. 1,4,13')
    parser.add_argument('--compile-mode', default='auto',
                        help='engine fast path: auto, none or cuda_graphs (CUDA only)')
    parser.add_argument('--resolution', type=int, default=352)
    # torch by default: the comparison is the engine's design against transformers' own forward
    # in the same runtime; bench/backends_bench.py compares the back ends.
    parser.add_argument('--backend', default='torch', help='engine back end: torch, openvino')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')

    build_start = time.perf_counter()
    model, tokenizer = build_random_model('full', seed=0)
    parameters = sum(p.numel() for p in model.parameters())
    engine = ClipSegEngine.from_model(
        model, tokenizer, PREPROCESSOR_CONFIG, device=args.device, dtype=args.dtype,
        resolution=args.resolution, compile_mode=args.compile_mode,
        model_name='full-size CLIPSeg, random weights', backend=args.backend)
    build_seconds = time.perf_counter() - build_start
    process, process_name = make_processor(tokenizer)
    # The naive forward runs the torch model as the engine left it (float32 under OpenVINO).
    device, dtype = engine.device, next(model.parameters()).dtype
    frame = np.random.default_rng(0).integers(
        0, 256, (FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'model: full-size CLIPSeg architecture, {parameters / 1e6:.1f}M parameters, random '
          f'weights (built in {build_seconds:.1f} s)')
    print(f'device: {device} ({name}), torch threads: {torch.get_num_threads()}, '
          f'compile_mode: {engine.compile_mode}')
    print(f'engine runtime: {engine.runtime_summary}; naive: transformers in torch '
          f'{str(dtype).replace("torch.", "")}')
    print(f'frame: {FRAME_WIDTH}x{FRAME_HEIGHT}, resolution: {engine.resolution}, '
          f'warm-up: {args.warmup}, repeats: {args.repeats} (median)')
    print(f'naive preprocessing: {process_name}')
    print('times in s per frame: median (min); speed-up = naive median / engine median')
    print(f'{"prompts":>7} {"naive":>16} {"engine":>16} {"speed-up":>9} {"(of mins)":>9} '
          f'{"prompt embedding s":>19}')

    results = []
    for count in args.prompts:
        texts = list(PROMPTS[:count])
        embed_start = time.perf_counter()
        prompts = engine.text_prompts(texts)
        embed_seconds = time.perf_counter() - embed_start
        naive_times, engine_times = interleaved_times(
            [lambda: naive_frame(model, process, frame, texts, device, dtype),
             lambda: engine.segment(frame, prompts, threshold=0.3)],
            device, args.warmup, args.repeats)
        naive, fast = statistics.median(naive_times), statistics.median(engine_times)
        engine_p99 = float(np.percentile(engine_times, 99))
        # Work per frame at 352 px (our count): encoder 45.8 GMACs + decoder 0.58 GMACs a prompt.
        gmacs = (ENCODER_GMACS + DECODER_GMACS_PER_PROMPT * count) * \
            (engine.resolution / 352) ** 2
        tflops = 2 * gmacs / fast / 1e3
        speedup = naive / fast
        speedup_min = min(naive_times) / min(engine_times)
        print(f'{count:>7} {naive:>7.3f} ({min(naive_times):.3f}) '
              f'{fast:>7.3f} ({min(engine_times):.3f}) {speedup:>8.2f}x {speedup_min:>8.2f}x '
              f'{embed_seconds:>19.3f}   engine p99 {engine_p99:.4f} s, {tflops:.2f} TFLOP/s')
        results.append({
            'prompts': count, 'naive_s': round(naive, 4), 'engine_s': round(fast, 4),
            'speedup': round(speedup, 2), 'naive_min_s': round(min(naive_times), 4),
            'engine_min_s': round(min(engine_times), 4), 'speedup_of_mins': round(speedup_min, 2),
            'prompt_embedding_s': round(embed_seconds, 4), 'engine_p99_s': round(engine_p99, 5),
            'achieved_tflops': round(tflops, 3)})
    summary = {
        'benchmark': 'clipseg_engine_vs_naive', 'device': str(device), 'device_name': name,
        'dtype': str(engine.dtype).replace('torch.', ''), 'backend': engine.backend,
        'naive_dtype': str(dtype).replace('torch.', ''), 'threads': torch.get_num_threads(),
        'compile_mode': engine.compile_mode, 'frame': [FRAME_WIDTH, FRAME_HEIGHT],
        'resolution': engine.resolution, 'repeats': args.repeats, 'warmup': args.warmup,
        'naive_preprocessing': process_name, 'results': results,
    }
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
