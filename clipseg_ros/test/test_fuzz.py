"""Hundreds of seeded malformed frames and requests, then a valid frame the node must answer."""

import numpy as np
import pytest

from clipseg_ros.tools import fuzz
from clipseg_ros.conversions import image_to_array
from node_harness import RunningNode, encode_frame, rgb_frame

SEED = 20261125


@pytest.mark.parametrize('compressed', [False, True], ids=['raw', 'compressed'])
def test_fuzzed_frames_and_requests_leave_the_node_working(ros_context, tiny_model_dir,
                                                           compressed):
    rng = np.random.default_rng(SEED + compressed)
    harness = RunningNode(ros_context, tiny_model_dir, compressed=compressed)
    try:
        node = harness.node
        assert harness.camera.wait_for_subscriber()
        frames = 150
        for _ in range(frames):
            bad = fuzz.malformed_compressed(rng) if compressed else fuzz.malformed_image(rng)
            harness.camera.publish(bad)
        answered = refused = 0
        generators = [('text', fuzz.malformed_text_request),
                      ('image', fuzz.malformed_image_prompt_request),
                      ('segment', fuzz.malformed_segment_request)]
        for index in range(120):
            which, make = generators[index % len(generators)]
            response = harness.call(which, make(rng))  # raises if the node stops answering
            answered += 1
            refused += not response.success
            if not response.success:
                assert response.message, 'a refusal always says why'
        assert answered == 120
        assert refused > 60, 'most fuzzed requests are invalid and must be refused'
        # The node had every chance to choke: now a valid frame and a valid request.
        harness.call('text', fuzz.SetTextPrompts.Request(prompts=['mug', 'floor']))
        if compressed:
            import cv2
            from sensor_msgs.msg import CompressedImage
            ok, png = cv2.imencode('.png', rgb_frame(40, 30)[:, :, ::-1])
            good = CompressedImage(format='png')
            good.data = png.tobytes()
        else:
            good = encode_frame(rgb_frame(40, 30), 'bgr8')
        outputs = harness.send_and_wait(good)
        assert image_to_array(outputs['mask']).shape == (30, 40)
        assert outputs['segmentation'].labels == ['mug', 'floor']
        counters = node.counters
        assert counters.rejected > 0
        assert counters.failed == 0, counters.last_error
        assert counters.processed >= 1
    finally:
        harness.close()
