"""
Teaching by pointing through the node: ~/teach, ~/forget and clicks on `image_mouse_left`,
real rclpy over loopback DDS with the shipped miniature CLIPSeg on synthetic scenes.
"""

import array
import math
import threading
import time

from clipseg_ros.conversions import image_to_array
from clipseg_ros.core.teach_region import middle_pixel
from clipseg_ros.node import ClipSegNode
from clipseg_ros.tools.drive import CameraStream
from clipseg_ros.tools.scenes import phrase, render_scene
from clipseg_ros_interfaces.srv import Forget, Teach
import cv2
from geometry_msgs.msg import PointStamped
from node_harness import call_service, encode_frame, RunningNode, tiny_model_overrides
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

MINI_MODEL = 'package://clipseg_ros/models/clipseg_shapes_mini'
KIND = ('square', 'blue')
OTHER_KIND = ('circle', 'red')
ABSENT = 'yellow star'       # a prompt for a kind no test scene holds
MIN_IOU = 0.8


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def assert_found(mask: np.ndarray, scene, kind, other_kind) -> None:
    """A taught prompt's mask lies on its kind (the miniature model's one-shot masks reach
    IoU 0.6-0.95: test_teach_semantic.py measures them), far from the other kind."""
    on_kind, on_other = iou(mask, scene.mask_of(*kind)), iou(mask, scene.mask_of(*other_kind))
    assert on_kind >= 0.5 and on_kind > 5 * on_other, (on_kind, on_other)


@pytest.fixture(scope='module')
def scene():
    return render_scene(0, 640, 480, num_objects=3, include=[KIND, OTHER_KIND],
                        colours=('green', 'red', 'blue'))


def teach_harness(context, **overrides) -> RunningNode:
    values = {'resolution': 0, 'threshold': 0.3, 'prompts': [ABSENT], **overrides}
    harness = RunningNode(context, MINI_MODEL, **values)
    node = harness.client_node
    harness.clients['teach'] = node.create_client(Teach, '/clipseg/teach')
    harness.clients['forget'] = node.create_client(Forget, '/clipseg/forget')
    harness.clicks = node.create_publisher(PointStamped, 'image_mouse_left', 10)
    return harness


def teach(harness, x, y, label='', append=True, camera=''):
    return harness.call('teach', Teach.Request(camera=camera, x=float(x), y=float(y),
                                               label=label, append=append))


def rqt_click(x: float, y: float, node) -> PointStamped:
    """A click as rqt_image_view publishes it: pixel column and row, z 0, stamped now."""
    msg = PointStamped()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.point.x, msg.point.y = float(x), float(y)
    return msg


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def harness(ros_context):
    running = teach_harness(ros_context)
    yield running
    running.close()


def test_teach_an_instance_of_a_prompt_in_force(ros_context, scene):
    running = teach_harness(ros_context, prompts=[phrase(KIND)])
    try:
        outputs = running.send_and_wait(encode_frame(scene.rgb, 'bgr8'))
        truth = scene.mask_of(*KIND)
        response = teach(running, *middle_pixel(truth), label='this one')
        assert response.success, response.message
        assert response.method == 'instance'
        mask = image_to_array(response.mask) > 0
        assert response.mask.header == outputs['mask'].header
        assert iou(mask, truth) >= MIN_IOU, iou(mask, truth)
        assert response.prompt_version == 2
        assert running.node.prompt_set.labels == [phrase(KIND), 'this one']
    finally:
        running.close()


def test_teach_a_colour_region_then_see_it_and_forget_it(harness, scene):
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    truth = scene.mask_of(*KIND)
    response = teach(harness, *middle_pixel(truth))
    assert response.success, response.message
    assert response.method == 'colour_region'
    assert iou(image_to_array(response.mask) > 0, truth) >= MIN_IOU
    assert harness.node.prompt_set.labels == [ABSENT, 'taught_1']
    # The next frame shows the taught prompt: in the segmentation's labels, and its mask.
    outputs = harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    assert list(outputs['segmentation'].labels) == [ABSENT, 'taught_1']
    taught_region = image_to_array(outputs['mask']) == 2
    assert_found(taught_region, scene, KIND, OTHER_KIND)
    overlay = image_to_array(outputs['overlay'])  # coloured where the taught prompt is
    assert (overlay[taught_region] != scene.rgb[taught_region]).any(axis=1).mean() > 0.9
    forgotten = harness.call('forget', Forget.Request(label='taught_1'))
    assert forgotten.success, forgotten.message
    assert forgotten.prompt_version == response.prompt_version + 1
    assert harness.node.prompt_set.labels == [ABSENT]
    for label in ('taught_1', ABSENT):  # gone; the last one stays
        refused = harness.call('forget', Forget.Request(label=label))
        assert not refused.success and refused.prompt_version == forgotten.prompt_version
    assert harness.node.prompt_set.labels == [ABSENT]


def test_teach_with_append_false_replaces_the_prompts(harness, scene):
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    response = teach(harness, *middle_pixel(scene.mask_of(*OTHER_KIND)), label='red thing',
                     append=False)
    assert response.success, response.message
    assert harness.node.prompt_set.labels == ['red thing']


def test_refusals_change_nothing_and_the_node_goes_on(harness, scene):
    before = harness.node.prompt_set
    no_frame = teach(harness, 10, 10)
    assert not no_frame.success and 'no segmented frame' in no_frame.message
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    far = cv2.distanceTransform((scene.label_image() == 0).astype(np.uint8), cv2.DIST_L2, 5)
    table = np.nonzero(far > 30)
    refusals = {
        'unknown camera': (teach(harness, 10, 10, camera='left'), "no camera 'left'"),
        'outside': (teach(harness, 640, 10), 'outside the 640x480 frame'),
        'negative': (teach(harness, -3, 10), 'outside'),
        'huge': (teach(harness, 1e300, 1e300), 'outside'),
        'nan': (teach(harness, math.nan, 10), 'not a finite position'),
        'table': (teach(harness, table[1][len(table[1]) // 2], table[0][len(table[0]) // 2]),
                  'of the frame'),
        'long label': (teach(harness, 10, 10, label='x' * 301), 'longer than'),
    }
    flat = np.full((480, 640, 3), 90, np.uint8)
    harness.send_and_wait(encode_frame(flat, 'rgb8'))
    refusals['whole frame'] = (teach(harness, 320, 240), '100% of the frame')
    for case, (response, reason) in refusals.items():
        assert not response.success, case
        assert reason in response.message, (case, response.message)
        assert response.prompt_version == before.version, case
    assert harness.node.prompt_set is before
    assert harness.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    inactive = teach(harness, *middle_pixel(scene.mask_of(*KIND)))
    assert not inactive.success and 'not active' in inactive.message
    assert harness.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert harness.node.prompt_set is before
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))  # alive, segmenting


def test_a_click_as_rqt_image_view_publishes_it_appends_one_prompt(harness, scene):
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    node, clicks = harness.client_node, harness.clicks
    assert wait_until(lambda: clicks.get_subscription_count() > 0)
    before = harness.node.prompt_set
    # Fuzzed clicks first: each is refused (logged) and changes nothing.
    for x, y, z in ((math.nan, 5.0, 0.0), (1e300, 5.0, 0.0), (-40.0, -7.0, 0.0),
                    (5.0, math.inf, 0.0), (0.1, 0.1, -1.0), (0.1, 0.1, 0.5),
                    (2.0 ** 64, -(2.0 ** 64), 0.0)):
        msg = rqt_click(x, y, node)
        msg.point.z = z
        clicks.publish(msg)
    column, row = middle_pixel(scene.mask_of(*KIND))
    clicks.publish(rqt_click(column, row, node))
    assert wait_until(lambda: len(harness.node.prompt_set.prompts) == 2)
    time.sleep(0.5)  # a second prompt from any click would show by now
    assert harness.node.prompt_set.labels == [ABSENT, 'taught_1']
    assert harness.node.prompt_set.version == before.version + 1
    outputs = harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    assert_found(image_to_array(outputs['mask']) == 2, scene, KIND, OTHER_KIND)


def depth_messages(scene, stamp, frame_id: str):
    depth = np.ascontiguousarray(scene.depth_m)
    msg = Image(height=depth.shape[0], width=depth.shape[1], encoding='32FC1',
                step=depth.strides[0])
    msg.data = array.array('B', depth.tobytes())
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    i = scene.intrinsics
    info = CameraInfo(width=i.width, height=i.height,
                      k=[i.fx, 0.0, i.cx, 0.0, i.fy, i.cy, 0.0, 0.0, 1.0])
    info.header = msg.header
    return msg, info


def test_with_depth_a_click_teaches_the_surface_and_a_3d_point_is_projected(ros_context,
                                                                             scene):
    running = teach_harness(ros_context, use_depth=True)
    try:
        node = running.client_node
        depth_pub = node.create_publisher(Image, 'depth', 10)
        info_pub = node.create_publisher(CameraInfo, 'camera_info', 10)
        pairing = running.node.camera().depth.pairing
        stamp = node.get_clock().now().to_msg()
        depth, info = depth_messages(scene, stamp, 'camera_optical')
        assert wait_until(lambda: depth_pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0)
        info_pub.publish(info)
        depth_pub.publish(depth)
        assert wait_until(lambda: pairing.counters.depth_received > 0)
        key = running.camera.publish(encode_frame(scene.rgb, 'rgb8'), stamp=stamp)
        assert running.camera.wait_outputs(key)['segmentation'].has_depth
        truth = scene.mask_of(*KIND)
        response = teach(running, *middle_pixel(truth))
        assert response.success, response.message
        assert response.method == 'depth_surface'
        assert iou(image_to_array(response.mask) > 0, truth) >= MIN_IOU
        # rviz's Publish Point in the optical frame: the red object's 3D centre.
        other = next(obj for obj in scene.objects if obj.kind == OTHER_KIND)
        point = PointStamped()
        point.header.frame_id = 'camera_optical'
        point.point.x, point.point.y, point.point.z = (float(v) for v in other.centroid_3d)
        assert wait_until(lambda: running.clicks.get_subscription_count() > 0)
        running.clicks.publish(point)
        assert wait_until(lambda: len(running.node.prompt_set.prompts) == 3)
        # The next frame (with its depth) shows both taught prompts, in rviz's markers too.
        markers = []
        node.create_subscription(MarkerArray, 'markers', markers.append, 10)
        assert wait_until(lambda: running.node.count_subscribers('markers') > 0)
        stamp = node.get_clock().now().to_msg()
        depth, info = depth_messages(scene, stamp, 'camera_optical')
        received = pairing.counters.depth_received
        depth_pub.publish(depth)
        assert wait_until(lambda: pairing.counters.depth_received > received)
        key = running.camera.publish(encode_frame(scene.rgb, 'rgb8'), stamp=stamp)
        outputs = running.camera.wait_outputs(key)
        assert outputs['segmentation'].has_depth
        labels = image_to_array(outputs['mask'])
        assert_found(labels == 3, scene, OTHER_KIND, KIND)
        assert wait_until(lambda: any(m.header.stamp == stamp for a in markers
                                      for m in a.markers))
        texts = {m.text for a in markers for m in a.markers if m.header.stamp == stamp}
        assert {'taught_1', 'taught_2'} <= texts, texts
    finally:
        running.close()


def test_two_cameras_each_take_their_own_clicks(ros_context, scene):
    node = ClipSegNode(context=ros_context, parameter_overrides=tiny_model_overrides(
        MINI_MODEL, cameras=['a', 'b'], resolution=0, prompts=[ABSENT]))
    test_node = rclpy.create_node('clicks_test', context=ros_context)
    streams = {name: CameraStream(test_node, f'{name}/image', output_namespace=name,
                                  keep_outputs=True) for name in 'ab'}
    clicks = {name: test_node.create_publisher(PointStamped, f'{name}/image_mouse_left', 10)
              for name in 'ab'}
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(test_node)
    assert node.autostart_if_enabled()
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        # Camera a sees the scene, camera b a flat wall: a click read on the other camera's
        # frame would be refused (a) or taught (b).
        frames = {'a': scene.rgb, 'b': np.full_like(scene.rgb, 90)}
        for name, stream in streams.items():
            assert stream.wait_for_subscriber()
            key = stream.publish(encode_frame(frames[name], 'rgb8'), frame_id=f'{name}_optical')
            assert stream.wait_outputs(key) is not None
            assert wait_until(lambda: clicks[name].get_subscription_count() > 0)
        column, row = middle_pixel(scene.mask_of(*KIND))
        clicks['b'].publish(rqt_click(column, row, test_node))
        clicks['a'].publish(rqt_click(column, row, test_node))
        assert wait_until(lambda: len(node.prompt_set.prompts) == 2)
        time.sleep(0.5)
        assert node.prompt_set.labels == [ABSENT, 'taught_1']
        client = test_node.create_client(Teach, '/clipseg/teach')
        response = call_service(test_node, client, Teach.Request(camera='b', x=5.0, y=5.0))
        assert not response.success and '100% of the frame' in response.message
        response = call_service(test_node, client, Teach.Request(
            camera='a', x=float(column), y=float(row)))
        assert response.success and response.mask.header.frame_id == 'a_optical'
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
        node.destroy_node()
        test_node.destroy_node()


def test_the_label_prefix_is_live_and_checked(harness, scene):
    assert not harness.set_parameter('teach_label_prefix', ' ').successful
    assert not harness.set_parameter('teach_depth_gap', 0.0).successful  # below its range
    assert harness.set_parameter('teach_label_prefix', 'mine_').successful
    harness.send_and_wait(encode_frame(scene.rgb, 'rgb8'))
    response = teach(harness, *middle_pixel(scene.mask_of(*KIND)))
    assert response.success, response.message
    assert harness.node.prompt_set.labels == [ABSENT, 'mine_1']
