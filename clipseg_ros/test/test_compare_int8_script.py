"""
scripts/compare_int8.py, the check a user runs on their own frames before choosing int8: on a
few images with the tiny model, its per-prompt IoU and largest probability difference match
what two engines built here give, and --min-iou decides the exit code.
"""

import json

from checkout_scripts import load_script
import cv2
from clipseg_ros.core.cpu_features import host_cpu_features
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.scenes import render_scene
import numpy as np
import pytest
from test_int8 import needs_int8

pytestmark = [needs_int8, pytest.mark.skipif(
    not host_cpu_features().native_int8, reason='this CPU has no VNNI or AMX-INT8')]
PROMPTS = ['a red circle', 'a blue square', 'a green star']


def _folder(root, name, first_seed, count):
    folder = root / name
    folder.mkdir()
    for index in range(count):
        rgb = render_scene(first_seed + index, 120, 90).rgb
        assert cv2.imwrite(str(folder / f'{index}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def test_the_script_reports_what_the_two_precisions_give(tiny_model_dir, tmp_path,
                                                          capsys) -> None:
    images = _folder(tmp_path, 'images', 9_600_000, 3)
    calibration = _folder(tmp_path, 'calibration', 7_700_000, 3)
    cache = str(tmp_path / 'cache')
    common = ['--prompts', *PROMPTS, '--calibration', str(calibration), '--resolution', '64',
              '--cache', cache, '--threshold', '0.5']
    script = load_script('compare_int8')
    assert script.main([str(tiny_model_dir), str(images), *common]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['images'] == 3 and 'int8' in report['runtime']
    # The same comparison, computed here from two engines (int8 read from the script's cache).
    engines = [ClipSegEngine(str(tiny_model_dir), device='cpu', backend='openvino', dtype=dtype,
                             resolution=64, compiled_model_cache=cache,
                             int8_calibration=str(calibration) if dtype == 'int8' else None)
               for dtype in ('float32', 'int8')]
    assert engines[1]._network.quantizations == 0
    results = [[engine.segment(cv2.cvtColor(cv2.imread(str(images / f'{i}.png')),
                                            cv2.COLOR_BGR2RGB),
                               engine.text_prompts(PROMPTS), 0.5, return_probabilities=True)
                for i in range(3)] for engine in engines]
    for k, row in enumerate(report['prompts']):
        assert row['prompt'] == PROMPTS[k]
        both = sum(np.sum((a.labels == k + 1) & (b.labels == k + 1)) for a, b in zip(*results))
        either = sum(np.sum((a.labels == k + 1) | (b.labels == k + 1))
                     for a, b in zip(*results))
        assert row['marked_pixels'] == either
        assert row['iou'] == pytest.approx(both / either if either else 1.0)
        assert row['max_probability_difference'] == pytest.approx(max(
            np.abs(a.probabilities[k] - b.probabilities[k]).max() for a, b in zip(*results)))
    assert any(row['marked_pixels'] > 0 for row in report['prompts'])
    # An IoU bar above what a prompt reached fails the run; one below passes it.
    lowest = min(row['iou'] for row in report['prompts'])
    assert script.main([str(tiny_model_dir), str(images), *common,
                        '--min-iou', str(lowest - 1e-6)]) == 0
    if lowest < 1.0:
        assert script.main([str(tiny_model_dir), str(images), *common,
                            '--min-iou', str(min(1.0, lowest + 1e-3))]) == 1


def test_a_folder_without_images_is_refused(tiny_model_dir, tmp_path) -> None:
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='holds no images'):
        load_script('compare_int8').main([str(tiny_model_dir), str(tmp_path / 'empty'),
                                          '--prompts', 'a cup'])
