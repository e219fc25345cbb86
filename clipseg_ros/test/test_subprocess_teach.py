"""
A click reaches the installed node: clipseg_node started as clipseg.launch.py starts it (image
remapped to a camera's topic), a click published as rqt_image_view publishes it on that topic's
`_mouse_left` twin, and one prompt is added.
"""

import time

from clipseg_ros.core.teach_region import middle_pixel
from clipseg_ros.tools.drive import start_node_process, stop_node_process, wait_for_subscription
from clipseg_ros.tools.scenes import render_scene
from clipseg_ros_interfaces.srv import Segment
from geometry_msgs.msg import PointStamped
from node_harness import call_service, encode_frame, publish_until_answered
from test_subprocess_node import spinning_camera

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
IMAGE_TOPIC = '/teach_cam/color/image_raw'


def test_a_click_on_the_camera_topic_teaches_the_installed_node(ros_context, tmp_path):
    scene = render_scene(0, 640, 480, num_objects=3, include=[('square', 'blue')])
    log_path = tmp_path / 'clipseg_node.log'
    process = start_node_process(
        {'model': MINI_MODEL, 'device': 'cpu', 'resolution': '0', 'prompts': "['yellow star']",
         'qos_reliability': 'reliable', 'teach_label_prefix': 'pointed_'},
        IMAGE_TOPIC, log_path)
    try:
        with spinning_camera(ros_context, image_topic=IMAGE_TOPIC) as camera:
            node = camera.node
            clicks = node.create_publisher(PointStamped, IMAGE_TOPIC + '_mouse_left', 10)
            assert wait_for_subscription(camera.publisher, 60.0), log_path.read_text()
            assert wait_for_subscription(clicks, 60.0), log_path.read_text()
            frame = encode_frame(scene.rgb, 'rgb8')
            assert publish_until_answered(camera, frame) is not None, log_path.read_text()
            column, row = middle_pixel(scene.mask_of('square', 'blue'))
            click = PointStamped()
            click.header.stamp = node.get_clock().now().to_msg()
            click.point.x, click.point.y = float(column), float(row)
            clicks.publish(click)
            client = node.create_client(Segment, '/clipseg/segment')
            deadline, labels = time.monotonic() + 60.0, []
            while time.monotonic() < deadline:  # the prompts in force, on the latest frame
                response = call_service(node, client, Segment.Request())
                assert response.success, response.message
                labels = list(response.segmentation.labels)
                if len(labels) > 1:
                    break
                time.sleep(0.2)
    finally:
        assert stop_node_process(process) == 0, log_path.read_text()
    log = log_path.read_text()
    assert labels == ['yellow star', 'pointed_1'], log
    assert log.count("taught 'pointed_") == 1, log
    assert 'colour_region' in log, log
