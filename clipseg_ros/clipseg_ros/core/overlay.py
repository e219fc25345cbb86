"""
The operator overlay: each prompt's region outlined in its colour over a light tint of it, so
the object's own colour stays readable, and its label near the region's centroid, inside the
frame and clear of the other labels.
"""

from collections.abc import Sequence

from clipseg_ros.core.region_stats import RegionStats
import cv2
import numpy as np

FILL_ALPHA = 0.25   # weight of the prompt's colour inside its region
OUTLINE_ALPHA = 1.0  # the border pixels: the prompt's colour alone
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Label positions tried around the centroid before giving up on keeping clear of the others:
# (rows, columns) in label heights and widths.
_LABEL_SHIFTS = ((0, 0), (1, 0), (-1, 0), (2, 0), (-2, 0), (0, 1), (0, -1), (1, 1), (-1, -1),
                 (3, 0), (-3, 0), (1, -1), (-1, 1))


def palette(size: int = 256) -> np.ndarray:
    """Return (size, 3) uint8 distinct colours; entry 0 (background) is black."""
    hues = (np.arange(size) * 47) % 180  # a large prime step spreads neighbours apart in hue
    hsv = np.stack([hues, np.full(size, 220), np.full(size, 255)], axis=1).astype(np.uint8)
    colours = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


PALETTE = palette()
_PALETTE_MAP = np.ascontiguousarray(PALETTE[:, None])  # (256, 1, 3) for cv2.applyColorMap


def outline_width(height: int, width: int) -> int:
    """Outline thickness in pixels for a frame: 2 at 640 x 480, more on larger frames."""
    return max(1, round(min(height, width) / 240))


def region_borders(labels: np.ndarray, thickness: int) -> np.ndarray:
    """
    (H, W) bool: labelled pixels within ``thickness`` pixels of a pixel with another label
    (the inside of each region's contour); the frame's edge is not a border.
    """
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    lowest = cv2.erode(labels, kernel, borderType=cv2.BORDER_REPLICATE)
    highest = cv2.dilate(labels, kernel, borderType=cv2.BORDER_REPLICATE)
    return (labels > 0) & ((lowest != labels) | (highest != labels))


def render_overlay(image_rgb: np.ndarray, labels: np.ndarray, stats: RegionStats,
                   names: Sequence[str], alpha: float = FILL_ALPHA) -> np.ndarray:
    """
    Tint each prompt's pixels with its colour (weight ``alpha``), draw its region's border in
    that colour, and write its label near its centroid, inside the frame and off the others.
    """
    labels = np.ascontiguousarray(labels, np.uint8)
    height, width = labels.shape
    if image_rgb.shape[:2] != (height, width):
        raise ValueError(f'labels {width}x{height} and frame {image_rgb.shape[1]}x'
                         f'{image_rgb.shape[0]} differ')
    thickness = outline_width(height, width)
    # Only around the labelled pixels, widened by the outline's reach (a border pixel depends
    # on its neighbours that far): elsewhere the overlay is the frame.
    left, top, box_width, box_height = cv2.boundingRect(labels)
    rows = slice(max(top - thickness, 0), min(top + box_height + thickness, height))
    columns = slice(max(left - thickness, 0), min(left + box_width + thickness, width))
    if not (box_width and box_height):
        overlay = image_rgb.copy()
    elif rows == slice(0, height) and columns == slice(0, width):
        overlay = _tinted(image_rgb, labels, thickness, alpha)
    else:
        overlay = image_rgb.copy()
        overlay[rows, columns] = _tinted(image_rgb[rows, columns],
                                         np.ascontiguousarray(labels[rows, columns]),
                                         thickness, alpha)
    write_labels(overlay, stats, names)
    return overlay


def _tinted(image_rgb: np.ndarray, labels: np.ndarray, thickness: int,
            alpha: float) -> np.ndarray:
    """
    A window of the overlay: labelled pixels tinted, their region's border drawn. ``labels``
    is a contiguous array of its own, so the outline's filters see its edges as the frame's.
    """
    # OpenCV's colour map (one 1-to-3-channel look-up) and masked copies: several times faster
    # than numpy's indexing.
    colours = cv2.applyColorMap(labels, _PALETTE_MAP)
    tinted = cv2.addWeighted(image_rgb, 1.0 - alpha, colours, alpha, 0.0)
    cv2.copyTo(image_rgb, (labels == 0).view(np.uint8), tinted)
    cv2.copyTo(colours, region_borders(labels, thickness).view(np.uint8), tinted)
    return tinted


def write_labels(overlay: np.ndarray, stats: RegionStats, names: Sequence[str]) -> None:
    """Write each present prompt's name near its centroid, inside the frame, off the others."""
    height, width = overlay.shape[:2]
    scale = max(0.4, min(height, width) / 600.0)
    placed: list[tuple[int, int, int, int]] = []
    for index, name in enumerate(names):
        if stats.pixel_count[index] == 0 or not name:
            continue
        (text_width, text_height), baseline = cv2.getTextSize(name, _FONT, scale, 1)
        box_height = text_height + baseline
        centre_x, centre_y = (int(v) for v in stats.centroids[index])
        box = label_box(centre_x - text_width // 2, centre_y - box_height // 2, text_width,
                        box_height, width, height, placed)
        placed.append(box)
        origin = (box[0], box[1] + text_height)
        colour = tuple(int(c) for c in PALETTE[index + 1])
        # A dark box under the text: readable over any colour, the object's included.
        cv2.rectangle(overlay, (box[0], box[1]), (box[0] + box[2] - 1, box[1] + box[3] - 1),
                      (0, 0, 0), thickness=cv2.FILLED)
        cv2.putText(overlay, name, origin, _FONT, scale, colour, thickness=1,
                    lineType=cv2.LINE_AA)


def label_box(left: int, top: int, box_width: int, box_height: int, width: int, height: int,
              placed: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """
    (left, top, width, height) of a label: the first of a few positions around the wanted one,
    moved inside the frame, that overlaps no label already placed (else the wanted one).
    """
    def inside(x: int, y: int) -> tuple[int, int, int, int]:
        return (min(max(x, 0), max(0, width - box_width)),
                min(max(y, 0), max(0, height - box_height)), box_width, box_height)

    for rows, columns in _LABEL_SHIFTS:
        box = inside(left + columns * box_width, top + rows * box_height)
        if not any(overlaps(box, other) for other in placed):
            return box
    return inside(left, top)


def overlaps(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> bool:
    """Whether two (left, top, width, height) boxes share a pixel."""
    return (first[0] < second[0] + second[2] and second[0] < first[0] + first[2] and
            first[1] < second[1] + second[3] and second[1] < first[1] + first[3])
