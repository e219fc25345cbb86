"""
Which instance of a frame continues which track, for the tracks and instances of one prompt:
association costs, optimal assignment, and merges (one instance over several tracks). numpy and
scipy, no ROS.

Costs: with a 3D centroid on both sides, the distance of the instance's raw centroid from the
track's predicted one in units of the gate, plus a quarter of the image cost; without depth,
the image cost alone: 1 - IoU of the predicted and found boxes, or when they do not overlap
1 + the distance of their centres in the predicted box's diagonals. Pairs beyond the gate (3D),
or more than one diagonal apart (image), are not associated. Where both sides have a colour
signature, its distance (core/appearance.py) is added with APPEARANCE_WEIGHT: it decides only
between pairs whose positions cost about the same.

Merges: objects of one prompt that touch in the image at one depth become one instance, whose
centroid lies between them. An instance whose box covers most of the predicted boxes of two or
more reported tracks, whose mask fills most of each one's pixels inside its box (the box
alone would keep holding an object taken out of a block whose outer box it did not change), and
with
depth, whose 3D extent holds their predicted centroids, is a merge: it continues none of them.
"""

from collections.abc import Callable
from dataclasses import dataclass

from clipseg_ros.core.appearance import signature_distance
import numpy as np
from scipy.optimize import linear_sum_assignment

APPEARANCE_WEIGHT = 0.5
# A predicted box at least this much inside an instance's box is covered by it.
MERGE_COVERAGE = 0.6
# Where the instance's 3D extent ends, plus this fraction of the gate, a track is outside it.
MERGE_DEPTH_MARGIN = 0.5
# A track held in a merge may continue an instance this many diagonals from its held box once
# the region parts (the objects moved while they touched).
HELD_REACH = 3.0
FORBIDDEN = 1e9


@dataclass
class Side:
    """Boxes (x, y, w, h), 3D centroids (NaN: none) and colour signatures (None: none)."""

    boxes: np.ndarray
    positions: np.ndarray
    signatures: np.ndarray | None = None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (T, 4) and (K, 4) x, y, w, h boxes: (T, K)."""
    inter = _intersection(a, b)
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    return inter / np.maximum(union, 1e-9)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a[:, None, :], b[None, :, :]
    low = np.maximum(a[..., :2], b[..., :2])
    high = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    return np.clip(high - low, 0, None).prod(axis=-1)


def association_costs(tracks: Side, found: Side, gate_m: float,
                      held: np.ndarray | None = None) -> np.ndarray:
    """(T, K) costs of tracks (predicted) and instances, inf where not allowed."""
    boxes, found_boxes = tracks.boxes, found.boxes.astype(np.float64)
    iou = box_iou(boxes, found_boxes)
    centre_distance = np.linalg.norm(
        (boxes[:, None, :2] + boxes[:, None, 2:] / 2)
        - (found_boxes[None, :, :2] + found_boxes[None, :, 2:] / 2), axis=2)
    diagonal = np.maximum(np.linalg.norm(boxes[:, 2:], axis=1), 1.0)[:, None]
    image_cost = np.where(iou > 0, 1.0 - iou, 1.0 + centre_distance / diagonal)
    distance = np.linalg.norm(tracks.positions[:, None, :] - found.positions[None, :, :], axis=2)
    with_3d = np.isfinite(distance)
    costs = np.where(with_3d, distance / gate_m + 0.25 * np.minimum(image_cost, 2.0),
                     image_cost)
    reach = np.full((len(boxes), 1), 2.0)
    if held is not None:
        reach[held] = 1.0 + HELD_REACH
    allowed = np.where(with_3d, distance <= gate_m, image_cost < reach)
    if held is not None:  # after a merge the 3D state is as old as the 2D one
        allowed |= held[:, None] & (image_cost < reach)
    if tracks.signatures is not None and found.signatures is not None:
        costs = costs + APPEARANCE_WEIGHT * signature_distance(tracks.signatures,
                                                               found.signatures)
    return np.where(allowed, costs, np.inf)


def assign(costs: np.ndarray) -> list[tuple[int, int]]:
    """
    The (row, column) pairs of least total cost, each row and column at most once, no pair of
    infinite cost; as many pairs as the allowed ones permit (forbidden pairs cost more than any
    set of allowed ones).
    """
    if not costs.size or not np.isfinite(costs).any():
        return []
    rows, columns = linear_sum_assignment(np.where(np.isfinite(costs), costs, FORBIDDEN))
    return [(int(r), int(c)) for r, c in zip(rows, columns) if np.isfinite(costs[r, c])]


def merges(tracks: Side, candidates: np.ndarray, found: Side, extent_min: np.ndarray,
           extent_max: np.ndarray, gate_m: float,
           on_mask: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[int, list[int]]:
    """
    {instance: [tracks]} for the instances that cover the predictions of two or more of the
    tracks flagged in ``candidates`` (each track counted in the instance covering most of it).
    ``extent_min`` / ``extent_max`` (K, 3) are the instances' 3D extents (NaN: no depth);
    ``on_mask(rows)`` (len(rows), K): whether each instance's mask fills the box of each of the
    tracks ``rows`` (None: not checked). It is asked only about the tracks it can decide: those
    covered by an instance that also covers another candidate (the masks cost a histogram a
    track; apart, tracks never merge).
    """
    rows = np.flatnonzero(candidates)
    if len(rows) < 2 or not len(found.boxes):
        return {}
    boxes = tracks.boxes[rows]
    area = np.maximum(boxes[:, 2] * boxes[:, 3], 1e-9)
    coverage = _intersection(boxes, found.boxes.astype(np.float64)) / area[:, None]
    margin = MERGE_DEPTH_MARGIN * gate_m
    positions = tracks.positions[rows][:, None, :]
    with np.errstate(invalid='ignore'):
        inside = ((positions >= extent_min[None] - margin)
                  & (positions <= extent_max[None] + margin)).all(axis=2)
    known = np.isfinite(positions).all(axis=2) & np.isfinite(extent_min).all(axis=1)[None]
    coverage = np.where(known & ~inside, 0.0, coverage)
    if on_mask is not None:
        # A track whose covering instances cover no other candidate ends alone in any of them,
        # and a group of one is no merge, whatever the masks say.
        covering = coverage >= MERGE_COVERAGE
        deciding = np.flatnonzero((covering & (covering.sum(axis=0) >= 2)).any(axis=1))
        filled = np.zeros(covering.shape, bool)
        if len(deciding):
            filled[deciding] = on_mask(rows[deciding])
        coverage = np.where(filled, coverage, 0.0)
    best = np.argmax(coverage, axis=1)
    groups: dict[int, list[int]] = {}
    for index, (row, column) in enumerate(zip(rows.tolist(), best.tolist())):
        if coverage[index, column] >= MERGE_COVERAGE:
            groups.setdefault(column, []).append(row)
    return {column: group for column, group in groups.items() if len(group) >= 2}
