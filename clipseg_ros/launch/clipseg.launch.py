"""Start the clipseg node: `ros2 launch clipseg_ros clipseg.launch.py image:=/camera/image_raw`.

Arguments are plain strings (never evaluated).  `model` and `device` override the parameters
file only when given, so the YAML stays the single place for defaults.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _clipseg_node(context):
    overrides = {}
    for name in ('model', 'device'):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    parameters = [LaunchConfiguration('params_file').perform(context)]
    if overrides:
        parameters.append(overrides)
    return [Node(
        package='clipseg_ros',
        executable='clipseg_node',
        name='clipseg',
        namespace=LaunchConfiguration('namespace'),
        parameters=parameters,
        remappings=[('image', LaunchConfiguration('image')),
                    ('image/compressed', [LaunchConfiguration('image'), '/compressed'])],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    default_params = os.path.join(
        get_package_share_directory('clipseg_ros'), 'config', 'clipseg.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the clipseg node parameters'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its topics'),
        DeclareLaunchArgument('image', default_value='image',
                              description='Camera image topic to segment'),
        DeclareLaunchArgument('model', default_value='',
                              description='Override: hub id or local model folder'),
        DeclareLaunchArgument('device', default_value='',
                              description='Override: auto, cpu, cuda or cuda:N'),
        OpaqueFunction(function=_clipseg_node),
    ])
