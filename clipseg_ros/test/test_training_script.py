"""
scripts/train_miniature.py, which built the shipped miniature model: its look-alike weights, its
confuser scenes, and a few training steps end to end into a folder the engine loads.

The script is not part of the installed package; it is loaded from the checkout
(``checkout_scripts``), so the tests keep using the installed package.
"""

import json

from checkout_scripts import load_script
from clipseg_ros.core.engine import ClipSegEngine
from clipseg_ros.tools.scenes import render_scene
import numpy as np
import pytest
import torch


@pytest.fixture(scope='module')
def trainer():
    return load_script('train_miniature')


def _coverage() -> np.ndarray:
    """Three objects on a 6 x 6 map: two disjoint squares and one half-covered pixel."""
    coverage = np.zeros((3, 6, 6), dtype=np.float32)
    coverage[0, 0:2, 0:2] = 1.0
    coverage[1, 3:5, 3:5] = 1.0
    coverage[2, 5, 0] = 0.5
    return coverage


def test_lookalike_weights_fall_on_the_objects_not_named(trainer) -> None:
    weights = trainer.lookalike_weights(_coverage(), 1, 4.0)
    assert weights.shape == (6, 6) and weights.dtype == np.float32
    assert np.all(weights[0:2, 0:2] == 4.0)     # another object
    assert np.all(weights[3:5, 3:5] == 1.0)     # the named one
    assert weights[5, 0] == pytest.approx(2.5)  # half another object
    table = np.ones((6, 6), dtype=bool)
    table[0:2, 0:2] = table[3:5, 3:5] = False
    table[5, 0] = False
    assert np.all(weights[table] == 1.0)


def test_a_negative_prompt_weights_every_object(trainer) -> None:
    weights = trainer.lookalike_weights(_coverage(), -1, 3.0)
    assert np.all(weights[0:2, 0:2] == 3.0) and np.all(weights[3:5, 3:5] == 3.0)
    assert weights[5, 0] == pytest.approx(2.0)
    assert weights[2, 2] == 1.0


def test_weight_one_leaves_the_loss_unweighted(trainer) -> None:
    assert np.all(trainer.lookalike_weights(_coverage(), 0, 1.0) == 1.0)
    assert np.all(trainer.lookalike_weights(_coverage()[:1], 0, 5.0) == 1.0)


def test_confuser_scenes_follow_the_same_colour_share(trainer) -> None:
    for seed in range(40):
        same = trainer.confusers(seed, 1.0, 1.0)
        assert len(same) == 2
        assert same[0][1] == same[1][1] and same[0][0] != same[1][0]
        other = trainer.confusers(seed, 1.0, 0.0)
        assert other[0][0] == other[1][0] and other[0][1] != other[1][1]
        assert trainer.confusers(seed, 0.0, 1.0) == []


def test_a_few_steps_write_a_folder_the_engine_loads(trainer, tmp_path) -> None:
    out = tmp_path / 'mini'
    status = trainer.main([str(out), '--scenes', '40', '--steps', '3', '--batch', '4',
                           '--supports', '4', '--validation-scenes', '2',
                           '--validate-every', '0', '--workers', '1',
                           '--lookalike-weight', '4', '--same-colour-share', '1.0'])
    assert status == 0
    for name in ('model.safetensors', 'config.json', 'tokenizer.json',
                 'preprocessor_config.json', 'training.json'):
        assert (out / name).is_file(), name
    record = json.loads((out / 'training.json').read_text())
    assert record['settings']['lookalike_weight'] == 4.0
    assert record['settings']['same_colour_share'] == 1.0
    assert [entry['step'] for entry in record['validation']] == [3]
    engine = ClipSegEngine(str(out), device='cpu', dtype='float32')
    assert engine.resolution == 128
    scene = render_scene(5, 640, 480)
    result = engine.segment(scene.rgb, engine.text_prompts(['red circle']), threshold=0.3)
    assert result.labels.shape == (480, 640)


def test_token_focus_weighs_object_patches(trainer) -> None:
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))
    # Four patches (2 x 2 grid) plus the class token; every token reads as class 0 (table).
    tokens = torch.tensor([[[0.0, 0.0]] + [[1.0, 0.0]] * 4])
    shares = torch.zeros(1, 3, 2, 2)
    shares[0, 0] = 1.0
    shares[0, 0, 0, 0] = 0.0
    shares[0, 1, 0, 0] = 1.0     # one object patch, read wrongly as table
    uniform = trainer.token_loss(head, tokens, shares)
    focused = trainer.token_loss(head, tokens, shares, focus=3.0)
    wrong = -torch.log_softmax(torch.tensor([4.0, 0.0, 0.0]), dim=0)[1]
    right = -torch.log_softmax(torch.tensor([4.0, 0.0, 0.0]), dim=0)[0]
    assert float(uniform) == pytest.approx(float(wrong + 3 * right) / 4)
    assert float(focused) == pytest.approx(float(4 * wrong + 3 * right) / 7)
