"""Example bringup fragment: segment a namespaced RGB camera with clipseg.

Outputs appear as /front_camera/mask, /front_camera/confidence, /front_camera/overlay and
/front_camera/segmentation next to the camera's own topics; prompts are set through
/front_camera/clipseg/set_text_prompts.  It accepts every argument of clipseg.launch.py, with
this camera's namespace and topic as defaults, and forwards them all, so e.g.
`namespace:=rear_camera image:=/rear_camera/color/image_raw model:=/models/clipseg` applies.
With `use_depth:=true` it also reads the camera's aligned depth and colour camera_info and
publishes 3D targets, /front_camera/points and /front_camera/markers.
"""

import os

from clipseg_ros import launch_args
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

# The topics of a RealSense-style camera with depth aligned to colour (read with use_depth:=true).
CAMERA_DEFAULTS = {
    'namespace': 'front_camera',
    'image': '/front_camera/color/image_raw',
    'depth': '/front_camera/aligned_depth_to_color/image_raw',
    'camera_info': '/front_camera/color/camera_info',
}


def generate_launch_description():
    clipseg_launch = os.path.join(str(launch_args.share_directory()), 'launch',
                                  'clipseg.launch.py')
    defaults = {'params_file': launch_args.default_params_file(), **CAMERA_DEFAULTS}
    names = [name for name, _, _ in launch_args.ARGUMENTS]
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                description=description)
          for name, default, description in launch_args.ARGUMENTS],
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(clipseg_launch),
            launch_arguments={name: LaunchConfiguration(name) for name in names}.items(),
        ),
    ])
