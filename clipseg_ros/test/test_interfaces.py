"""The generated interfaces import and survive a real service round trip over loopback DDS."""

import threading

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from clipseg_ros_interfaces.msg import Segmentation
from clipseg_ros_interfaces.srv import Segment, SetImagePrompt, SetTextPrompts


def test_interface_fields_are_the_documented_ones():
    request = SetImagePrompt.Request()
    assert {'label', 'image', 'mask', 'append'} <= set(request.get_fields_and_field_types())
    assert {'success', 'message', 'prompt_version'} <= set(
        SetImagePrompt.Response.get_fields_and_field_types())
    assert set(SetTextPrompts.Request.get_fields_and_field_types()) == {'prompts'}
    assert {'image', 'prompts', 'camera'} == set(Segment.Request.get_fields_and_field_types())
    assert {'success', 'message', 'segmentation', 'mask', 'confidence'} <= set(
        Segment.Response.get_fields_and_field_types())
    fields = Segmentation.get_fields_and_field_types()
    for name, type_name in {
        'header': 'std_msgs/Header', 'prompt_version': 'uint32', 'labels': 'sequence<string>',
        'max_confidence': 'sequence<float>', 'pixel_count': 'sequence<uint32>',
        'boxes': 'sequence<sensor_msgs/RegionOfInterest>',
        'centroids': 'sequence<geometry_msgs/Point>',
    }.items():
        assert fields[name] == type_name


def test_set_image_prompt_round_trip_over_dds(ros_context):
    server_node = rclpy.create_node('prompt_server', context=ros_context)
    client_node = rclpy.create_node('prompt_client', context=ros_context)
    received = []

    def handle(request, response):
        received.append(request)
        response.success = True
        response.message = f'{request.label}: {request.image.width}x{request.image.height}'
        response.prompt_version = 7
        return response

    server_node.create_service(SetImagePrompt, 'set_image_prompt', handle)
    client = client_node.create_client(SetImagePrompt, 'set_image_prompt')
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(server_node)
    executor.add_node(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
        request = SetImagePrompt.Request()
        request.label = 'red mug'
        request.image.height, request.image.width = 4, 6
        request.image.encoding = 'rgb8'
        request.image.step = 18
        request.image.data = pixels.tobytes()
        request.append = True
        future = client.call_async(request)
        deadline = threading.Event()
        future.add_done_callback(lambda _: deadline.set())
        assert deadline.wait(10.0), 'service call timed out'
        response = future.result()
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)
        server_node.destroy_node()
        client_node.destroy_node()
    assert response.success
    assert response.message == 'red mug: 6x4'
    assert response.prompt_version == 7
    assert len(received) == 1
    assert received[0].append is True
    assert bytes(received[0].image.data) == pixels.tobytes()


if __name__ == '__main__':
    raise SystemExit(pytest.main([__file__]))
