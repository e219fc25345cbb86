"""
Does a click teach the kind? For several kinds, ~/teach at the middle pixel of an object in one
scene, with the shipped miniature CLIPSeg in the node, then the node segments held-out scenes;
the same is done with a support prompt made from the object's true mask in the same scene
(~/set_image_prompt). The taught prompt must reach at least 0.9 of the support prompt's mean IoU
with the kind in the held-out scenes (both printed).
"""

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core.teach_region import middle_pixel
from clipseg_ros.tools.scenes import COLOURS, render_scene
from clipseg_ros_interfaces.srv import SetImagePrompt, Teach
from node_harness import encode_frame, RunningNode
import numpy as np
import pytest

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
KINDS = (('square', 'blue'), ('circle', 'red'), ('triangle', 'green'))
TEACH_SEED = 70
HELD_OUT_SEEDS = range(80, 86)
MIN_SHARE_OF_SUPPORT = 0.9


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def scenes_with(kind, seeds):
    """Scenes holding the kind, the other objects of other colours (as test_semantic.py)."""
    others = tuple(colour for colour in COLOURS if colour != kind[1])
    return [render_scene(seed, 640, 480, num_objects=3, include=[kind], colours=others)
            for seed in seeds]


def mean_iou(harness: RunningNode, scenes, kind) -> float:
    ious = []
    for scene in scenes:
        mask = image_to_array(harness.send_and_wait(encode_frame(scene.rgb, 'bgr8'))['mask'])
        ious.append(iou(mask == 1, scene.mask_of(*kind)))
    return float(np.mean(ious))


@pytest.fixture
def node(ros_context):
    harness = RunningNode(ros_context, MINI_MODEL, resolution=0, threshold=0.3,
                          prompts=['object'])
    harness.clients['teach'] = harness.client_node.create_client(Teach, '/clipseg/teach')
    yield harness
    harness.close()


@pytest.mark.parametrize('kind', KINDS, ids=['-'.join(kind) for kind in KINDS])
def test_a_click_teaches_the_kind_about_as_well_as_its_true_mask(node, kind):
    teach_scene = scenes_with(kind, [TEACH_SEED])[0]
    held_out = scenes_with(kind, HELD_OUT_SEEDS)
    truth = teach_scene.mask_of(*kind)
    node.send_and_wait(encode_frame(teach_scene.rgb, 'bgr8'))
    column, row = middle_pixel(truth)
    taught = node.call('teach', Teach.Request(x=float(column), y=float(row), append=False))
    assert taught.success, taught.message
    taught_mask_iou = iou(image_to_array(taught.mask) > 0, truth)
    taught_iou = mean_iou(node, held_out, kind)

    support = SetImagePrompt.Request(image=encode_frame(teach_scene.rgb, 'bgr8'))
    support.mask = encode_frame(np.repeat(truth[:, :, None].astype(np.uint8) * 255, 3, 2),
                                'mono8')
    response = node.call('image', support)
    assert response.success, response.message
    support_iou = mean_iou(node, held_out, kind)
    print(f'{kind}: taught by a click ({taught.method}, mask IoU {taught_mask_iou:.3f}): '
          f'held-out mean IoU {taught_iou:.3f}; support prompt from the true mask: '
          f'{support_iou:.3f}; ratio {taught_iou / support_iou:.3f}')
    assert support_iou > 0.3  # the support prompt itself finds the kind
    assert taught_iou >= MIN_SHARE_OF_SUPPORT * support_iou, (taught_iou, support_iou)
