#!/usr/bin/env python3
"""
Follow one grasp target from the clipseg node's `segmentation` topic and print its track and 3D
point, frame by frame.

    grasp_target_client.py --prompt 'red mug'            # the best-scoring red mug, then that one
    grasp_target_client.py --track-id 7                  # a track chosen before
    grasp_target_client.py --topic /robot/clipseg/segmentation

The target is chosen once (the highest-scoring instance of the prompt that has a track id) and
then followed by its track id while the arm moves; when its track is missing from a message the
target is lost (the node keeps a track through track_max_missed_frames unseen frames, reported
with seen_this_frame false), and the client chooses again.
"""

import argparse
import math

from clipseg_ros_interfaces.msg import Segmentation
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy


def choose(instances, prompt: str):
    """The best-scoring instance of ``prompt`` seen in this frame with a track id, or None."""
    candidates = [i for i in instances
                  if i.label == prompt and i.track_id and i.seen_this_frame]
    return max(candidates, key=lambda i: i.score, default=None)


class GraspTargetClient(Node):
    def __init__(self, topic: str, prompt: str, track_id: int) -> None:
        super().__init__('grasp_target_client')
        self.prompt, self.track_id = prompt, track_id
        self.create_subscription(Segmentation, topic, self.on_segmentation,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    def on_segmentation(self, msg: Segmentation) -> None:
        target = next((i for i in msg.instances if self.track_id and i.track_id == self.track_id),
                      None)
        if target is None:
            if self.track_id:
                print(f'track #{self.track_id} lost')
                self.track_id = 0
            if not self.prompt:
                return
            target = choose(msg.instances, self.prompt)
            if target is None:
                print(f"no tracked '{self.prompt}' in this frame")
                return
            self.track_id = target.track_id
            print(f"target: '{target.label}' #{target.track_id} (score {target.score:.2f})")
        point = target.centroid_3d_smoothed
        where = ('no depth' if math.isnan(point.z)
                 else f'({point.x:.3f}, {point.y:.3f}, {point.z:.3f}) m in {msg.header.frame_id}')
        state = 'seen' if target.seen_this_frame else f'unseen for {target.missed_frames} frames'
        print(f"#{target.track_id} '{target.label}' {where}, {state}, "
              f'age {target.track_age_seconds:.1f} s')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--topic', default='/clipseg/segmentation')
    parser.add_argument('--prompt', default='', help='label of the prompt to pick from')
    parser.add_argument('--track-id', type=int, default=0, help='follow this track')
    arguments, ros_arguments = parser.parse_known_args()
    if not arguments.prompt and not arguments.track_id:
        parser.error('give --prompt or --track-id')
    rclpy.init(args=ros_arguments)
    node = GraspTargetClient(arguments.topic, arguments.prompt, arguments.track_id)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
