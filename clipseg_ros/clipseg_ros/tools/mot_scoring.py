"""
Multi-object tracking scores of one sequence with TrackEval's metrics: HOTA, CLEAR (MOTA, ID
switches) and Identity (IDF1), from per-frame ground-truth and tracker boxes with ids. A tracker
box matches a ground-truth box by IoU (0.5 for CLEAR and Identity, HOTA over its thresholds).

TrackEval comes in through scripts/requirements-bench.txt (installed without its declared
dependencies: see there).
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameBoxes:
    """Ids and x, y, w, h boxes of one frame (ground truth or a tracker's)."""

    ids: list[int]
    boxes: np.ndarray              # (N, 4)


@dataclass
class Scores:
    """The scores of one tracker on one sequence."""

    hota: float
    idf1: float
    mota: float
    id_switches: int
    true_positives: int
    misses: int
    false_positives: int


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of x, y, w, h boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    low = np.maximum(a[..., :2], b[..., :2])
    high = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    inter = np.clip(high - low, 0, None).prod(axis=-1)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(union, 1e-9)


def _dense(ids_per_frame: list[list[int]]) -> tuple[list[np.ndarray], int]:
    """Ids renumbered 0..n-1 in order of first appearance, as TrackEval expects."""
    index: dict[int, int] = {}
    dense = []
    for ids in ids_per_frame:
        dense.append(np.array([index.setdefault(i, len(index)) for i in ids], np.int64))
    return dense, len(index)


def sequence_data(truth: list[FrameBoxes], tracked: list[FrameBoxes]) -> dict:
    """TrackEval's per-sequence data from per-frame boxes (the same frames on both sides)."""
    if len(truth) != len(tracked):
        raise ValueError(f'{len(truth)} ground-truth frames and {len(tracked)} tracked ones')
    gt_ids, gt_count = _dense([frame.ids for frame in truth])
    tracker_ids, tracker_count = _dense([frame.ids for frame in tracked])
    return {
        'num_timesteps': len(truth), 'num_gt_ids': gt_count, 'num_tracker_ids': tracker_count,
        'num_gt_dets': sum(len(ids) for ids in gt_ids),
        'num_tracker_dets': sum(len(ids) for ids in tracker_ids),
        'gt_ids': gt_ids, 'tracker_ids': tracker_ids,
        'similarity_scores': [box_iou_xywh(g.boxes, t.boxes) for g, t in zip(truth, tracked)],
    }


def score(truth: list[FrameBoxes], tracked: list[FrameBoxes]) -> Scores:
    """HOTA, IDF1, MOTA and ID switches of a tracker's boxes against the ground truth."""
    from trackeval.metrics import CLEAR, HOTA, Identity
    data = sequence_data(truth, tracked)
    quiet = {'PRINT_CONFIG': False, 'THRESHOLD': 0.5}
    hota = HOTA({'PRINT_CONFIG': False}).eval_sequence(data)
    clear = CLEAR(quiet).eval_sequence(data)
    identity = Identity(quiet).eval_sequence(data)
    return Scores(hota=float(np.mean(hota['HOTA'])), idf1=float(identity['IDF1']),
                  mota=float(clear['MOTA']), id_switches=int(clear['IDSW']),
                  true_positives=int(clear['CLR_TP']), misses=int(clear['CLR_FN']),
                  false_positives=int(clear['CLR_FP']))
