"""
~/segment on a camera's latest frame with the prompts in force answers from the frame the node
already segmented and published (no second inference), and segments afresh whenever anything
that result depends on differs: another threshold, other prompts, a given image, a new frame,
another refinement or instance / tracking setting.
"""

from clipseg_ros.conversions import image_to_array
from clipseg_ros_interfaces.srv import Segment, SetTextPrompts
from node_harness import encode_frame, rgb_frame, RunningNode
import numpy as np
import pytest


@pytest.fixture
def running(ros_context, tiny_model_dir):
    harness = RunningNode(ros_context, tiny_model_dir)
    engine = harness.node._engine
    harness.inferences = 0
    inner = engine.segment_batch

    def counted(*args, **kwargs):
        harness.inferences += 1
        return inner(*args, **kwargs)
    engine.segment_batch = counted
    yield harness
    harness.close()


def _segment(harness, **fields) -> tuple:
    before = harness.inferences
    response = harness.call('segment', Segment.Request(**fields))
    assert response.success, response.message
    return response, harness.inferences - before


def test_the_latest_published_frame_is_answered_without_a_second_inference(running):
    frame = encode_frame(rgb_frame(64, 48, seed=5), 'rgb8')
    outputs = running.send_and_wait(frame)
    response, inferences = _segment(running)
    assert inferences == 0 and 'already published' in response.message
    assert response.mask.header.stamp == frame.header.stamp
    assert np.array_equal(image_to_array(response.mask), image_to_array(outputs['mask']))
    assert np.array_equal(image_to_array(response.confidence),
                          image_to_array(outputs['confidence']))
    published = outputs['segmentation']
    assert response.segmentation.labels == published.labels
    assert list(response.segmentation.pixel_count) == list(published.pixel_count)
    # The same frame given as the request's image is segmented afresh: the same answer.
    fresh, inferences = _segment(running, image=frame)
    assert inferences == 1 and 'already published' not in fresh.message
    assert np.array_equal(image_to_array(fresh.mask), image_to_array(response.mask))
    assert np.array_equal(image_to_array(fresh.confidence),
                          image_to_array(response.confidence))
    assert fresh.segmentation.labels == response.segmentation.labels
    assert list(fresh.segmentation.pixel_count) == list(response.segmentation.pixel_count)


def test_anything_the_result_depends_on_makes_the_call_segment_afresh(running):
    running.send_and_wait(encode_frame(rgb_frame(64, 48, seed=6), 'rgb8'))
    assert _segment(running)[1] == 0
    assert _segment(running, prompts=['sky'])[1] == 1  # one-off prompts
    assert _segment(running, image=encode_frame(rgb_frame(40, 30), 'rgb8'))[1] == 1
    assert running.call('text', SetTextPrompts.Request(prompts=['wall'])).success
    assert _segment(running)[1] == 1  # other prompts in force than the frame was published with
    running.send_and_wait(encode_frame(rgb_frame(64, 48, seed=7), 'rgb8'))
    assert _segment(running)[1] == 0  # the new frame, published with them
    assert running.set_parameter('resolution', 96).successful
    assert _segment(running)[1] == 1  # another input size


@pytest.mark.parametrize('name, changed', [
    ('refine', 'none'), ('min_instance_pixels', 7), ('instance_depth_gap', 0.2),
    ('max_instances_per_prompt', 1), ('depth_erosion_px', 0), ('tracking', False),
    ('track_min_frames', 1)])
def test_a_changed_refinement_or_object_setting_makes_the_call_segment_afresh(
        running, name, changed):
    running.send_and_wait(encode_frame(rgb_frame(64, 48, seed=8), 'rgb8'))
    assert _segment(running)[1] == 0
    default = running.node.get_parameter(name).value
    assert running.set_parameter(name, changed).successful
    response, inferences = _segment(running)
    assert inferences == 1 and 'already published' not in response.message
    assert running.set_parameter(name, default).successful
    assert _segment(running)[1] == 0  # what the frame was published with again
