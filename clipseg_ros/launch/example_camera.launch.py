"""Example bringup fragment: segment a namespaced RGB camera with clipseg.

Outputs appear as /front_camera/mask, /front_camera/confidence, /front_camera/overlay and
/front_camera/segmentation next to the camera's own topics; prompts are set through
/front_camera/clipseg/set_text_prompts.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def generate_launch_description():
    clipseg_launch = os.path.join(
        get_package_share_directory('clipseg_ros'), 'launch', 'clipseg.launch.py')
    return LaunchDescription([
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(clipseg_launch),
            launch_arguments={
                'namespace': 'front_camera',
                'image': '/front_camera/color/image_raw',
            }.items(),
        ),
    ])
