"""
Does the node segment the thing that was named? End to end, in process, with the trained
miniature CLIPSeg installed with the package, on synthetic tabletop scenes with exact ground
truth (tools/scenes.py), at the node's default threshold and the model's own input size.

A colour channel swap in a conversion, a mask shifted or flipped on the way back to the camera's
size, a support-image prompt that finds the wrong object: each breaks these tests. Each check
is the mean over six fixed scenes (seeds 0-5, each with the two named kinds among three
objects, the third green or yellow). The shipped model tells colours apart far better than
shapes of one colour (MODEL_CARD.md: held-out mIoU by case), so no scene holds a second object
of a named kind's colour: the tests then measure the node's path, not the model's weak spot.
The shipped model reaches a mean IoU of 0.95 for the named object on these scenes; the bars are
the 0.7 asked of the node (0.8 where the model has the margin), and a red/blue channel swap or a
shifted mask drops them far below.
"""

import array

from clipseg_ros.conversions import image_to_array
from clipseg_ros.tools.scene_sequences import several_of_a_kind
from clipseg_ros.tools.scenes import phrase, render_scene
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts
import cv2
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
MIN_IOU = 0.8            # text prompts: the named object's mask against the ground truth
MIN_OTHER_IOU = 0.8      # the other named kind, after the prompts changed
MIN_SUPPORT_IOU = 0.7    # a support image from another scene
# An absent kind: most of the frame a prompt may mark (almost empty; the present kind gets 2-13%)
MAX_ABSENT_SHARE = 0.002
DISTRACTOR_COLOURS = ('green', 'yellow')  # the third object of a scene
# What many camera drivers publish; the encodings test compares the others with it and rgb8.
CAMERA_ENCODING = 'bgr8'
KIND = ('square', 'blue')
OTHER_KIND = ('circle', 'red')
SEEDS = range(6)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def scenes(width: int = 640, height: int = 480, **kwargs):
    return [render_scene(seed, width, height, num_objects=3, include=[KIND, OTHER_KIND],
                         colours=DISTRACTOR_COLOURS, **kwargs) for seed in SEEDS]


def mini_node(context, **overrides) -> RunningNode:
    values = {'resolution': 0, 'threshold': 0.3, 'prompts': [phrase(KIND)], **overrides}
    return RunningNode(context, MINI_MODEL, **values)


def labels_of(harness: RunningNode, msg) -> np.ndarray:
    return image_to_array(harness.send_and_wait(msg)['mask'])


def first_prompt_ious(harness: RunningNode, scenes_, *kinds) -> list[list[float]]:
    """Per kind, the IoU of the first prompt's mask with that kind's object, scene by scene."""
    masks = [labels_of(harness, encode_frame(scene.rgb, CAMERA_ENCODING)) == 1
             for scene in scenes_]
    return [[iou(mask, scene.mask_of(*kind)) for mask, scene in zip(masks, scenes_)]
            for kind in kinds]


def compressed(rgb: np.ndarray, extension: str) -> CompressedImage:
    ok, data = cv2.imencode(extension, np.ascontiguousarray(rgb[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    msg = CompressedImage(format=extension.strip('.'))
    msg.data = array.array('B', data.tobytes())
    return msg


@pytest.fixture(scope='module')
def vga_scenes():
    return scenes()


@pytest.fixture
def node(ros_context):
    harness = mini_node(ros_context)
    yield harness
    harness.close()


def test_the_named_object_is_found_the_same_in_every_raw_encoding(node, vga_scenes):
    ious = []
    for scene in vga_scenes:
        reference = labels_of(node, encode_frame(scene.rgb, 'rgb8'))
        ious.append(iou(reference == 1, scene.mask_of(*KIND)))
        for encoding in ('bgr8', 'rgba8', 'bgra8'):  # each on its own against the truth too
            labels = labels_of(node, encode_frame(scene.rgb, encoding))
            ious.append(iou(labels == 1, scene.mask_of(*KIND)))
            np.testing.assert_array_equal(labels, reference, encoding)
    assert np.mean(ious) >= MIN_IOU, ious


@pytest.mark.parametrize('extension', ['.png', '.jpg'])
def test_the_named_object_is_found_in_compressed_frames(ros_context, vga_scenes, extension):
    harness = mini_node(ros_context, compressed=True)
    try:
        found = [labels_of(harness, compressed(scene.rgb, extension)) for scene in vga_scenes]
    finally:
        harness.close()
    raw = mini_node(ros_context)
    try:
        reference = [labels_of(raw, encode_frame(scene.rgb, CAMERA_ENCODING))
                     for scene in vga_scenes]
    finally:
        raw.close()
    ious = [iou(labels == 1, scene.mask_of(*KIND)) for labels, scene in zip(found, vga_scenes)]
    assert np.mean(ious) >= MIN_IOU, ious
    for labels, raw_labels in zip(found, reference):
        if extension == '.png':  # lossless: the very same labels
            np.testing.assert_array_equal(labels, raw_labels)
        else:  # JPEG changes pixel values a little, the mask hardly
            assert iou(labels == 1, raw_labels == 1) >= 0.9


def test_new_prompts_move_the_mask_to_the_newly_named_object(node, vga_scenes):
    response = node.call('text', SetTextPrompts.Request(prompts=[phrase(OTHER_KIND)]))
    assert response.success, response.message
    on_other, on_first = first_prompt_ious(node, vga_scenes, OTHER_KIND, KIND)
    assert np.mean(on_other) >= MIN_OTHER_IOU, on_other
    assert np.mean(on_first) < 0.1, on_first


def test_a_support_image_from_another_scene_finds_the_same_kind(node, vga_scenes):
    support_scene = render_scene(50, 640, 480, num_objects=2, include=[KIND])
    request = SetImagePrompt.Request(label='like this')
    # The support picture comes from elsewhere (an operator's photo, rgb8), the frames from the
    # camera: a channel swap on one side only must not go unnoticed.
    request.image = encode_frame(support_scene.rgb, 'rgb8')
    request.mask = encode_frame(
        np.repeat(support_scene.mask_of(*KIND)[:, :, None].astype(np.uint8) * 255, 3, 2),
        'mono8')
    response = node.call('image', request)
    assert response.success, response.message
    same, other = first_prompt_ious(node, vga_scenes, KIND, OTHER_KIND)
    assert np.mean(same) >= MIN_SUPPORT_IOU, same
    assert np.mean(same) > 3 * np.mean(other), (same, other)


def test_segment_service_agrees_with_the_camera_path(node, vga_scenes):
    scene = vga_scenes[0]
    camera_labels = labels_of(node, encode_frame(scene.rgb, CAMERA_ENCODING))
    response = node.call('segment', Segment.Request(image=encode_frame(scene.rgb, 'rgba8')))
    assert response.success, response.message
    np.testing.assert_array_equal(image_to_array(response.mask), camera_labels)
    latest = node.call('segment', Segment.Request())  # the latest camera frame
    np.testing.assert_array_equal(image_to_array(latest.mask), camera_labels)


def test_an_object_that_is_not_there_leaves_the_mask_almost_empty(ros_context):
    """On scenes without yellow objects, 'yellow star' marks (almost) nothing."""
    harness = mini_node(ros_context, prompts=['yellow star', phrase(KIND)])
    try:
        absent, present = [], []
        for seed in SEEDS:
            scene = render_scene(seed, 640, 480, num_objects=3, include=[KIND],
                                 colours=('red', 'blue', 'green'))
            assert all(colour != 'yellow' for _, colour in scene.kinds())
            labels = labels_of(harness, encode_frame(scene.rgb, CAMERA_ENCODING))
            absent.append((labels == 1).mean())
            present.append((labels == 2).mean())
    finally:
        harness.close()
    assert max(absent) <= MAX_ABSENT_SHARE, absent
    assert min(present) > 10 * MAX_ABSENT_SHARE, present  # the present kind is marked


def test_outputs_at_1280x720_line_up_with_the_ground_truth(node):
    ious = []
    misplaced = {'4 px right': [], '4 px down': [], 'mirrored': [], 'upside down': []}
    for scene in scenes(1280, 720):
        mask = labels_of(node, encode_frame(scene.rgb, CAMERA_ENCODING)) == 1
        truth = scene.mask_of(*KIND)
        assert mask.shape == truth.shape == (720, 1280)
        ious.append(iou(mask, truth))
        misplaced['4 px right'].append(iou(mask, np.roll(truth, 4, axis=1)))
        misplaced['4 px down'].append(iou(mask, np.roll(truth, 4, axis=0)))
        misplaced['mirrored'].append(iou(mask, truth[:, ::-1]))
        misplaced['upside down'].append(iou(mask, truth[::-1]))
    assert np.mean(ious) >= MIN_IOU, ious
    # A shift or flip on the way back to the frame's size would fit a moved truth better.
    for how, moved in misplaced.items():
        assert np.mean(moved) < np.mean(ious), (how, moved, ious)


def box_iou(box, mask: np.ndarray) -> float:
    """IoU of a RegionOfInterest with the bounding box of a mask."""
    rows, columns = np.nonzero(mask)
    truth = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    found = (box.x_offset, box.y_offset, box.x_offset + box.width, box.y_offset + box.height)
    width = min(found[2], truth[2]) - max(found[0], truth[0])
    height = min(found[3], truth[3]) - max(found[1], truth[1])
    inter = max(width, 0) * max(height, 0)
    area = (found[2] - found[0]) * (found[3] - found[1]) + (truth[2] - truth[0]) * (
        truth[3] - truth[1])
    return inter / (area - inter)


@pytest.mark.parametrize('count', [2, 3])
def test_several_objects_of_the_named_kind_are_as_many_instances(node, count):
    """
    Two or three red circles (no other red object) under the prompt 'red circle': the node's
    segmentation lists that many instances of the prompt, each on its own circle (its pixel
    centroid inside that circle's mask, its box close to the circle's), every circle found.
    """
    kind = ('circle', 'red')
    response = node.call('text', SetTextPrompts.Request(prompts=[phrase(kind)]))
    assert response.success, response.message
    box_ious = []
    for seed in range(3):
        scene = several_of_a_kind(seed, count).scene
        circles = [item for item in scene.objects if item.kind == kind]
        assert len(circles) == count
        assert not any(colour == 'red' for shape, colour in scene.kinds() if shape != 'circle')
        outputs = node.send_and_wait(encode_frame(scene.rgb, CAMERA_ENCODING))
        instances = [entry for entry in outputs['segmentation'].instances
                     if entry.seen_this_frame and entry.prompt_index == 0]
        assert len(instances) == count, (seed, [(i.pixel_count, i.score) for i in instances])
        owners = []
        for instance in instances:
            u, v = int(round(instance.centroid.x)), int(round(instance.centroid.y))
            inside = [k for k, item in enumerate(circles) if item.mask[v, u]]
            assert len(inside) == 1, (seed, u, v, 'an instance on no circle')
            owners.append(inside[0])
            box_ious.append(box_iou(instance.box, circles[inside[0]].mask))
            assert instance.label == phrase(kind)
        assert sorted(owners) == list(range(count)), (seed, owners)
    print(f'{count} of a kind: box IoU mean {np.mean(box_ious):.2f}, min {min(box_ious):.2f}')
    assert np.mean(box_ious) >= 0.7 and min(box_ious) >= 0.5, box_ious
