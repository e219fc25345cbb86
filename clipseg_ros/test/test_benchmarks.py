"""The transport benchmark measures the node without inference, and says so when it cannot."""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / 'bench'
# ros_scope.py: these check the benchmark scripts; the node they drive is tested on every distro.
FIRST_DISTRO_ONLY = 'the benchmarks\' smoke runs'


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stand_in_serves_every_per_frame_entry_point(tiny_model_dir):
    transport = load_bench('transport_bench')
    engine = transport.PrecomputedEngine(model=str(tiny_model_dir), device='cpu',
                                         resolution=64)
    prompts = engine.text_prompts(['a ball'])
    frames = [np.full((48, 64, 3), value, np.uint8) for value in (10, 200, 90)]
    batch = engine.segment_batch(frames, prompts, threshold=0.3)
    single = engine.segment(frames[0], prompts, threshold=0.3)
    again = engine.segment_batch(frames[:2], prompts, threshold=0.3)
    assert len(batch) == 3 and len(again) == 2
    assert single.labels.shape == (48, 64)
    assert engine.counts == {'forward_calls': 1, 'frames_served': 6}
    engine.segment(np.zeros((30, 40, 3), np.uint8), prompts, threshold=0.3)  # a new size
    assert engine.counts['forward_calls'] == 2


@pytest.mark.parametrize('counts, answered', [
    ({'forward_calls': 6, 'frames_served': 0}, 5),   # the model ran per frame
    ({'forward_calls': 1, 'frames_served': 0}, 5),   # answered without the stand-in
])
def test_stand_in_check_fails_loudly(counts, answered):
    with pytest.raises(SystemExit, match='stand-in'):
        load_bench('transport_bench').check_stand_in(counts, 1, answered)


def test_stand_in_check_passes_a_stand_in_that_served():
    load_bench('transport_bench').check_stand_in({'forward_calls': 1, 'frames_served': 5}, 1, 5)


def test_transport_bench_runs_briefly():
    result = subprocess.run(
        [sys.executable, str(BENCH / 'transport_bench.py'), '--sizes', '160x120', '--rounds',
         '1', '--frames', '5'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    row, = report['results']
    assert (row['width'], row['height']) == (160, 120)
    assert row['clipseg_answered'].endswith('/5') and row['echo_answered'].endswith('/5')


def test_tracking_bench_check_fails_a_tracker_that_skipped_frames_or_reported_nothing():
    tracking = load_bench('tracking_bench')
    from clipseg_ros.tools.mot_scoring import FrameBoxes
    frame = FrameBoxes([1], np.array([[0, 0, 4, 4]]))
    empty = FrameBoxes([], np.zeros((0, 4)))
    assert tracking.check('scene', [frame] * 3, {'node': [frame] * 3}) is None
    assert 'gave 2 frames of 3' in tracking.check('scene', [frame] * 3, {'node': [frame] * 2})
    assert 'no identity' in tracking.check('scene', [frame] * 3, {'node': [empty] * 3})
    assert 'no ground truth' in tracking.check('scene', [empty] * 3, {'node': [frame] * 3})


def test_tracking_bench_names_the_scenes_where_the_node_tracker_misses_its_targets():
    tracking = load_bench('tracking_bench')
    rows = [{'scene': 'occlusion, 20 frames', 'tracker': 'node', 'idf1': 0.9,
             'id_switches': 0},
            {'scene': 'touch and part, 2 of a kind', 'tracker': 'node', 'idf1': 0.97,
             'id_switches': 1},
            {'scene': 'dropped frames', 'tracker': 'node', 'idf1': 0.99, 'id_switches': 2},
            {'scene': 'occlusion, 20 frames', 'tracker': 'ByteTrack', 'idf1': 0.5,
             'id_switches': 3}]
    missed = tracking.missed_targets(rows)
    assert len(missed) == 2
    assert missed[0].startswith('occlusion, 20 frames: IDF1 0.900')
    assert missed[1] == 'touch and part, 2 of a kind: 1 ID switches'
    assert tracking.missed_targets(rows[2:]) == []


def test_tracking_bench_runs_one_scene(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH / 'tracking_bench.py'), '--scenes', 'touch2', '--json',
         str(tmp_path / 'scores.json')], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stdout
    rows = json.loads((tmp_path / 'scores.json').read_text())
    assert {row['tracker'] for row in rows} == {'node', 'node, no colour cue', 'ByteTrack',
                                                'OC-SORT'}
    node, = [row for row in rows if row['tracker'] == 'node']
    assert node['id_switches'] == 0 and node['idf1'] >= 0.95


def test_frame_cost_stand_in_segments_once_per_size_and_serves_every_frame(tiny_model_dir,
                                                                          monkeypatch):
    bench = load_bench('frame_cost_bench')
    monkeypatch.setenv(bench.MASKS_ENV, 'ragged')
    engine = bench.stand_in_engine_class()(model=str(tiny_model_dir), device='cpu',
                                           resolution=64, backend='torch')
    prompts = engine.text_prompts(['a ball', 'sky'])
    frames = [np.full((48, 64, 3), value, np.uint8) for value in (10, 200, 90)]
    first = engine.segment_batch(frames, prompts)
    engine.segment(np.zeros((30, 40, 3), np.uint8), prompts)  # a new size
    assert engine.frames_served == 4 and engine.stand_in.calls == 2
    assert first[0] is first[2], 'later frames of a size reuse the result'
    assert 0 < (first[0].labels > 0).mean() < 1, 'seeded maps give a partial mask'


def test_frame_cost_echo_publishes_every_output_the_node_publishes(tiny_model_dir):
    bench = load_bench('frame_cost_bench')
    scene = bench.scene_frames(160, 120, 1)[0]
    messages = bench.node_messages(str(tiny_model_dir), scene, 'clean', with_depth=True)
    assert tuple(sorted(messages)) == tuple(sorted(bench.outputs(True)))
    assert messages['points'].width > 0 and len(messages['segmentation'].instances) > 0


def test_frame_cost_bench_runs_briefly():
    result = subprocess.run(
        [sys.executable, str(BENCH / 'frame_cost_bench.py'), '--sizes', '160x120', '--masks',
         'ragged', '--rounds', '1', '--seconds', '1.5', '--rate', '10'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        env=dict(os.environ))
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    row, = report['results']
    assert (row['width'], row['height'], row['depth']) == (160, 120, True)
    assert 'points' in row['outputs'] and row['clipseg_cpu_ms_per_frame'] > 0
    assert 0 < row['least_extra_ms'] and row['least_over_echo'] > 1


@pytest.mark.parametrize('masks', ['clean', 'objects'])
def test_frame_cost_least_work_builds_the_nodes_outputs_and_checks_it(tiny_model_dir,
                                                                      monkeypatch, masks):
    bench = load_bench('frame_cost_bench')
    scene = bench.scene_frames(160, 120, 1)[0]
    for with_depth in (False, True):
        assert bench.least_extra_work(str(tiny_model_dir), scene, masks, with_depth,
                                      repeats=2) > 0
    outputs = bench.node_outputs

    def swapped(*args):  # the prompts' labels exchanged: not the node's frame
        messages, result = outputs(*args)
        result.labels = np.choose(result.labels, [0, 2, 1]).astype(np.uint8)
        return messages, result
    monkeypatch.setattr(bench, 'node_outputs', swapped)
    with pytest.raises(SystemExit, match="its mask is not the node's"):
        bench.least_extra_work(str(tiny_model_dir), scene, masks, True, repeats=2)


def test_frame_cost_least_work_counts_the_components_it_labels(tiny_model_dir):
    bench = load_bench('frame_cost_bench')
    scene = bench.scene_frames(160, 120, 1)[0]
    messages, _ = bench.node_outputs(str(tiny_model_dir), scene, 'objects', False)
    built = {name: messages[name] for name in ('mask', 'confidence', 'instances', 'overlay')}
    bench._check_least_work({**built, 'components': [2, 1]}, messages)
    with pytest.raises(SystemExit, match='components'):  # the red circles are two instances
        bench._check_least_work({**built, 'components': [1, 1]}, messages)


def test_depth_bench_times_the_worst_masks_and_fails_when_they_are_not_found(monkeypatch):
    from clipseg_ros.core.depth_targets import CameraModel
    bench = load_bench('depth_bench')
    camera = CameraModel(640, 480, 500.0, 500.0, 320.0, 240.0)
    timings = bench.worst_masks(camera, frames=1)
    assert set(timings) == {'specks_ms', 'specks_depth_ms', 'covering_ms', 'covering_depth_ms'}
    assert all(value > 0 for value in timings.values())
    monkeypatch.setattr(bench, 'find_instances', lambda *args, **kwargs: [None])
    with pytest.raises(SystemExit, match='instances on specks: 1, expected 0'):
        bench.worst_masks(camera, frames=1)
