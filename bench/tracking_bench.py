"""Tracking quality on scene sequences with known identities: the node's tracker beside ByteTrack
and OC-SORT, scored with TrackEval (HOTA, IDF1, MOTA, ID switches).

Each scene of clipseg_ros.tools.tracking_scenarios is rendered once; every frame that reaches
the tracker becomes a label image with CLIPSeg-like flaws and an aligned depth image, and
find_instances makes the frame's instances (with depth). Every tracker gets those same
instances: the node's tracker with their colour signatures (as the node runs it), ByteTrack and
OC-SORT from the `trackers` package their boxes and scores, one tracker per prompt, with their
defaults at 15 frames per second. The node's identities in a frame are its tracked instances
and the tracks held in a merged instance (at their held box). Also the node's tracker without
colour signatures, to show what the cue adds. No ROS, no model.

    python bench/tracking_bench.py            # every scene; --json FILE to keep the numbers
    python bench/tracking_bench.py --scenes touch   # touch2 and touch3
"""

import argparse
import json
import time

from clipseg_ros.tools.mot_scoring import score
from clipseg_ros.tools.tracker_runs import (
    camera_model, detect, reference_trackers, run_node_tracker, run_reference, truth)
from clipseg_ros.tools.tracking_scenarios import observations, scenario_makers

NODE, NODE_NO_CUE = 'node', 'node, no colour cue'
# The node tracker's targets: IDF1 on every scene, no ID switch where objects touch and part.
MIN_IDF1 = 0.95
TOUCH_SCENES = 'touch and part'


def check(name: str, ground_truth, outputs: dict) -> str | None:
    """Why the run did not measure what is printed, or None."""
    frames = len(ground_truth)
    if not frames or not sum(len(frame.ids) for frame in ground_truth):
        return f'{name}: no ground truth'
    for tracker, output in outputs.items():
        if len(output) != frames:
            return f'{name}: {tracker} gave {len(output)} frames of {frames}'
        if not sum(len(frame.ids) for frame in output):
            return f'{name}: {tracker} reported no identity at all'
    return None


def missed_targets(rows: list[dict]) -> list[str]:
    """The node tracker's scores below its targets, one line each."""
    missed = []
    for row in rows:
        if row['tracker'] != NODE:
            continue
        if row['idf1'] < MIN_IDF1:
            missed.append(f"{row['scene']}: IDF1 {row['idf1']:.3f} < {MIN_IDF1}")
        if row['scene'].startswith(TOUCH_SCENES) and row['id_switches']:
            missed.append(f"{row['scene']}: {row['id_switches']} ID switches")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scenes', default='', help='only scenes whose key contains this: '
                        + ', '.join(scenario_makers()))
    parser.add_argument('--json', help='write the scores here')
    args = parser.parse_args()
    references = reference_trackers()
    rows, problems, started = [], [], time.perf_counter()
    for key, make_scenario in scenario_makers().items():
        if args.scenes not in key:
            continue
        scenario = make_scenario()
        detected = detect(observations(scenario), camera_model(scenario))
        ground_truth = truth(detected)
        outputs = {NODE: run_node_tracker(detected),
                   NODE_NO_CUE: run_node_tracker(detected, with_signatures=False)}
        for name, make in references.items():
            outputs[name] = run_reference(make, detected)
        problem = check(scenario.name, ground_truth, outputs)
        if problem:
            problems.append(problem)
            continue
        for tracker, output in outputs.items():
            scores = score(ground_truth, output)
            rows.append({'scene': scenario.name, 'about': scenario.about,
                         'frames': len(detected), 'tracker': tracker, **vars(scores)})
    print('| scene | frames | tracker | HOTA | IDF1 | MOTA | ID switches |')
    print('| --- | ---: | --- | ---: | ---: | ---: | ---: |')
    for row in rows:
        print(f"| {row['scene']} | {row['frames']} | {row['tracker']} | {row['hota']:.3f} | "
              f"{row['idf1']:.3f} | {row['mota']:.3f} | {row['id_switches']} |")
    print(f'({time.perf_counter() - started:.0f} s)')
    for problem in problems:
        print(f'did not run as printed: {problem}')
    node = [row for row in rows if row['tracker'] == NODE]
    byte = {row['scene']: row for row in rows if row['tracker'] == 'ByteTrack'}
    if node:
        print(f"node tracker: IDF1 min {min(r['idf1'] for r in node):.3f}, ID switches "
              f"{sum(r['id_switches'] for r in node)} in all; ahead of ByteTrack's IDF1 on "
              f"{sum(r['idf1'] > byte[r['scene']]['idf1'] for r in node)} of "
              f"{sum(byte[r['scene']]['idf1'] < 1.0 for r in node)} scenes where ByteTrack "
              f'is below 1.0')
    if args.json:
        with open(args.json, 'w') as stream:
            json.dump(rows, stream, indent=1)
    missed = missed_targets(rows)
    for line in missed:
        print(f'node tracker below target: {line}')
    return 1 if problems or missed else 0


if __name__ == '__main__':
    raise SystemExit(main())
