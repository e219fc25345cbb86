"""Start the clipseg node: `ros2 launch clipseg_ros clipseg.launch.py image:=/camera/image_raw`.

Arguments are plain strings (never evaluated).  `model` and `device` override the parameters
file only when given, so the YAML stays the single place for defaults.  Unless
`use_fastdds_profile:=false` or a Fast DDS profile is already set in the environment, the node
(and only the node) gets the shipped profile for large images.  A missing or unreadable
parameters file and an invalid namespace or topic are refused in one line before the node
starts.  The checks live in clipseg_ros.launch_args, which CI runs without launch installed.
"""

from clipseg_ros import launch_args
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _clipseg_node(context):
    # Substitutions are performed first, so messages show values, not substitution objects.
    arguments = {name: LaunchConfiguration(name).perform(context)
                 for name, _, _ in launch_args.ARGUMENTS}
    # Raising stops launch before the node starts: one error line, exit status 1.
    plan = launch_args.plan(
        arguments, environ=context.environment,
        base_namespace=context.launch_configurations.get('ros_namespace'))
    return [Node(
        package=launch_args.PACKAGE,
        executable=launch_args.EXECUTABLE,
        name=launch_args.NODE_NAME,
        namespace=plan.namespace,
        parameters=plan.parameters,
        remappings=plan.remaps,
        additional_env=plan.env,
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    defaults = {'params_file': launch_args.default_params_file()}
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                description=description)
          for name, default, description in launch_args.ARGUMENTS],
        OpaqueFunction(function=_clipseg_node),
    ])
