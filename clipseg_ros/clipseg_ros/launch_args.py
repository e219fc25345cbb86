"""What clipseg.launch.py decides, in plain Python: the launch file and CI share this module.

`plan()` turns the launch argument strings into what the launch file hands to launch_ros's
`Node` (namespace, parameter files and overrides, remaps, extra environment) or refuses them
with a one-line `LaunchArgumentError`.  `node_command()` and `overrides_yaml()` spell out the
command line launch_ros 0.28 builds from that, so a test can start the installed executable
exactly as `ros2 launch` would where launch itself is not installed.  No launch imports here.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clipseg_ros.camera_names import camera_names_problem

PACKAGE = 'clipseg_ros'
EXECUTABLE = 'clipseg_node'
NODE_NAME = 'clipseg'
PROFILE_FILE_NAME = 'fastdds_large_images.xml'
# Fast DDS reads the first; releases before 2.x used the second. Either one set means the user
# chose a profile, and ours must not replace it.
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
LEGACY_PROFILE_ENV = 'FASTRTPS_DEFAULT_PROFILES_FILE'

# name, default ('' = not given; None = computed at launch time), description
ARGUMENTS: list[tuple[str, str | None, str]] = [
    ('params_file', None, 'YAML file with the clipseg node parameters '
                          '(default: the installed config/clipseg.yaml)'),
    ('namespace', '', 'Namespace of the node and its topics'),
    ('cameras', '', 'Override of the YAML: comma-separated camera names served by one node '
                    '(camera c reads c/image, publishes c/mask, ...); empty = one unnamed camera'),
    ('image', 'image', 'Camera image topic to segment (image/compressed and the clicks '
                       'image_mouse_left follow it); with cameras, one topic per camera, '
                       'comma-separated, in their order'),
    ('depth', 'depth', 'Depth image registered to the colour image (read with use_depth); '
                       'with cameras, one per camera, comma-separated'),
    ('camera_info', 'camera_info', "The colour camera's CameraInfo (read with use_depth); with "
                                   'cameras, one per camera, comma-separated'),
    ('model', '', 'Override of the YAML: hub id or local model folder'),
    ('device', '', 'Override of the YAML: auto, cpu, cuda or cuda:N'),
    ('use_depth', '', 'Override of the YAML: true to read depth and camera_info and publish 3D'),
    ('use_fastdds_profile', 'true',
     'true: give the node the shipped Fast DDS profile for large images, unless '
     f'{PROFILE_ENV} or {LEGACY_PROFILE_ENV} is already set; false: never'),
]
OVERRIDES = ('model', 'device', 'use_depth')
_TRUE = ('true', '1', 'yes', 'on')
_FALSE = ('false', '0', 'no', 'off')
# The documented ROS 2 name rules, used only where rclpy's validators cannot be imported.
_FULL_NAME = re.compile(r'(/[A-Za-z_][A-Za-z0-9_]*)+')


class LaunchArgumentError(ValueError):
    """A launch argument that would not give a working node; the message is one line."""


@dataclass
class NodePlan:
    """What the launch file passes to launch_ros's Node for the clipseg node."""

    namespace: str                # absolute, as launch_ros passes it in `-r __ns:=`
    params_file: str              # absolute path of an existing, readable YAML file
    # launch_ros writes these to a temporary parameters file: strings it reads as YAML, and
    # the camera list as a list
    overrides: dict[str, str | list[str]]
    remaps: list[tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)  # added to this node's environment only

    @property
    def parameters(self) -> list:
        """The `parameters` argument of Node: the file, then the overrides (later wins)."""
        return [self.params_file] + ([dict(self.overrides)] if self.overrides else [])

    @property
    def node_fqn(self) -> str:
        """The node's fully qualified name, the key launch_ros gives the overrides."""
        return ('' if self.namespace == '/' else self.namespace) + '/' + NODE_NAME


def share_directory() -> Path:
    """The installed share folder of clipseg_ros."""
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory(PACKAGE))


def installed_executable() -> str:
    """The installed clipseg_node, as launch_ros finds it (lib/<package>/<executable>)."""
    from ament_index_python.packages import get_package_prefix
    return str(Path(get_package_prefix(PACKAGE)) / 'lib' / PACKAGE / EXECUTABLE)


def default_params_file() -> str:
    return str(share_directory() / 'config' / 'clipseg.yaml')


def fastdds_profile_file() -> str:
    return str(share_directory() / 'config' / PROFILE_FILE_NAME)


def _first_line(error: BaseException) -> str:
    """rclpy's name errors span three lines (name and a caret); the first says what is wrong."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    text = lines[0].rstrip(':')
    for prefix in ('Invalid topic name: ', 'Invalid namespace: '):
        text = text.removeprefix(prefix)
    return text


def parse_bool(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise LaunchArgumentError(f"{name} '{value}' is not a boolean: use true or false")


def check_params_file(value: str) -> str:
    """Return the absolute path of a readable YAML parameters file, or refuse it."""
    if not value.strip():
        raise LaunchArgumentError('params_file is empty: give the path of a YAML file')
    path = Path(value).expanduser().absolute()
    if not path.exists():
        raise LaunchArgumentError(f"params_file '{value}' does not exist")
    if not path.is_file():
        raise LaunchArgumentError(f"params_file '{value}' is not a file")
    try:
        text = path.read_text()
    except OSError as error:
        raise LaunchArgumentError(
            f"params_file '{value}' cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise LaunchArgumentError(f"params_file '{value}' is not UTF-8 text") from None
    try:
        import yaml
    except ImportError:  # the node's own parser still refuses it (one FATAL line)
        return str(path)
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark is not None else ''
        problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
        raise LaunchArgumentError(
            f"params_file '{value}' is not valid YAML: {problem}{where}") from None
    return str(path)


def node_namespace(value: str, base: str | None = None) -> str:
    """The absolute namespace launch_ros gives the node (`base`: from PushRosNamespace)."""
    # launch_ros: a relative namespace goes under the pushed one; the result is made absolute.
    combined = value
    if base and not value.startswith('/'):
        combined = base.rstrip('/') + '/' + value if value else base
    namespace = combined if combined == '/' else combined.rstrip('/')
    namespace = namespace if namespace.startswith('/') else '/' + namespace
    try:
        from rclpy.validate_namespace import validate_namespace
    except ImportError:
        if namespace != '/' and not _FULL_NAME.fullmatch(namespace):
            raise LaunchArgumentError(f"namespace '{value}' is not a valid ROS namespace: "
                                      'use tokens of letters, digits and _ separated by /, '
                                      'none starting with a digit') from None
        return namespace
    try:
        validate_namespace(namespace)
    except Exception as error:
        raise LaunchArgumentError(
            f"namespace '{value}' is not a valid ROS namespace: {_first_line(error)}") from None
    return namespace


def check_topic(argument: str, value: str, namespace: str) -> str:
    """Refuse a topic name that the node's remap rule parser would reject."""
    try:
        from rclpy.expand_topic_name import expand_topic_name
        from rclpy.validate_full_topic_name import validate_full_topic_name
        from rclpy.validate_topic_name import validate_topic_name
    except ImportError:
        expanded = value
        if value.startswith('~'):
            expanded = ('' if namespace == '/' else namespace) + '/' + NODE_NAME + value[1:]
        elif not value.startswith('/'):
            expanded = ('' if namespace == '/' else namespace) + '/' + value
        if not _FULL_NAME.fullmatch(expanded):
            raise LaunchArgumentError(f"{argument} '{value}' is not a valid ROS topic name: "
                                      'use tokens of letters, digits and _ separated by /, '
                                      'none starting with a digit') from None
        return value
    try:
        validate_topic_name(value)
        validate_full_topic_name(expand_topic_name(value, NODE_NAME, namespace))
    except Exception as error:
        raise LaunchArgumentError(
            f"{argument} '{value}' is not a valid ROS topic name: {_first_line(error)}") from None
    return value


def camera_list(value: str) -> list[str]:
    """The `cameras` argument as names ([] when empty), refused when the node would be."""
    if not value.strip():
        return []
    names = [name.strip() for name in value.split(',')]
    problem = camera_names_problem(names)
    if problem is not None:
        raise LaunchArgumentError(f"cameras '{value}': {problem}")
    return names


def params_file_cameras(path: str) -> list[str]:
    """The `cameras` a parameters file gives the node ([] when it gives none)."""
    try:
        import yaml
        content = yaml.safe_load(Path(path).read_text())
    except (ImportError, OSError, ValueError):
        return []
    for key, entry in (content.items() if isinstance(content, dict) else ()):
        # Keys that can match the node: its name under any namespace, or every node.
        if str(key).rstrip('/').split('/')[-1] not in (NODE_NAME, '**', '*'):
            continue
        values = entry.get('ros__parameters') if isinstance(entry, dict) else None
        cameras = values.get('cameras') if isinstance(values, dict) else None
        if isinstance(cameras, list) and all(isinstance(c, str) for c in cameras):
            return cameras
    return []


def camera_remaps(cameras: list[str], arguments: Mapping[str, str],
                  namespace: str) -> list[tuple[str, str]]:
    """Remaps of each camera's inputs from the comma-separated image/depth/camera_info lists."""
    remaps = []
    for argument in ('image', 'depth', 'camera_info'):
        value = arguments.get(argument, argument)
        if value == argument:  # not given: camera c keeps c/image
            continue
        topics = [topic.strip() for topic in value.split(',')]
        if len(topics) != len(cameras):
            raise LaunchArgumentError(
                f"{argument} names {len(topics)} topic(s) for {len(cameras)} camera(s) "
                f"({', '.join(cameras)}): give one per camera, comma-separated, in order")
        for camera, topic in zip(cameras, topics):
            check_topic(argument, topic, namespace)
            remaps.append((f'{camera}/{argument}', topic))
            if argument == 'image':
                remaps.append((f'{camera}/image/compressed', topic + '/compressed'))
                # rqt_image_view's clicks on that topic (teaching by pointing)
                remaps.append((f'{camera}/image_mouse_left', topic + '_mouse_left'))
    return remaps


def node_environment(environ: Mapping[str, str], use_profile: bool) -> dict[str, str]:
    """Variables to add to the node's environment: the shipped profile, unless one is set."""
    if not use_profile or environ.get(PROFILE_ENV) or environ.get(LEGACY_PROFILE_ENV):
        return {}
    return {PROFILE_ENV: fastdds_profile_file()}


def plan(arguments: Mapping[str, str], environ: Mapping[str, str] | None = None,
         base_namespace: str | None = None) -> NodePlan:
    """Check the launch arguments (already substituted strings) and plan the node.

    `environ`: the launch environment (os.environ by default); `base_namespace`: the
    `ros_namespace` launch configuration a PushRosNamespace may have set.
    """
    environ = os.environ if environ is None else environ
    params_file = arguments['params_file'] if 'params_file' in arguments \
        else default_params_file()
    namespace = node_namespace(arguments.get('namespace', ''), base_namespace)
    use_profile = parse_bool('use_fastdds_profile',
                             arguments.get('use_fastdds_profile', 'true'))
    overrides: dict[str, str | list[str]] = {
        name: arguments[name] for name in OVERRIDES if arguments.get(name)}
    params_file = check_params_file(params_file)
    cameras = camera_list(arguments.get('cameras', ''))
    if cameras:
        overrides['cameras'] = cameras
    else:  # the topic lists then follow the cameras the parameters file names
        cameras = params_file_cameras(params_file)
    if cameras and cameras != ['']:
        return NodePlan(namespace=namespace, params_file=params_file, overrides=overrides,
                        remaps=camera_remaps(cameras, arguments, namespace),
                        env=node_environment(environ, use_profile))
    image = check_topic('image', arguments.get('image', 'image'), namespace)
    depth = check_topic('depth', arguments.get('depth', 'depth'), namespace)
    camera_info = check_topic('camera_info', arguments.get('camera_info', 'camera_info'),
                              namespace)
    return NodePlan(
        namespace=namespace,
        params_file=params_file,
        overrides=overrides,
        # raw and compressed transport of one camera, and rqt_image_view's clicks on it
        remaps=[('image', image), ('image/compressed', image + '/compressed'),
                ('image_mouse_left', image + '_mouse_left'), ('depth', depth),
                ('camera_info', camera_info)],
        env=node_environment(environ, use_profile),
    )


def overrides_yaml(node_plan: NodePlan) -> str | None:
    """The temporary parameters file launch_ros writes for the overrides dict (or None)."""
    if not node_plan.overrides:
        return None
    import yaml
    # launch_ros reads each string value as YAML ('true' becomes a bool), keeping scalars only.
    values = {}
    for name, text in node_plan.overrides.items():
        if isinstance(text, list):  # the camera list, given to launch_ros as a list
            values[name] = list(text)
            continue
        value = yaml.safe_load(text)
        values[name] = value if isinstance(value, (bool, int, float, str)) else text
    return yaml.dump({node_plan.node_fqn: {'ros__parameters': values}},
                     default_flow_style=False)


def node_command(executable: str, node_plan: NodePlan,
                 overrides_file: str | None = None) -> list[str]:
    """The argv launch_ros's Node runs for the plan (`overrides_file`: overrides_yaml saved)."""
    command = [executable, '--ros-args', '-r', f'__node:={NODE_NAME}',
               '-r', f'__ns:={node_plan.namespace}', '--params-file', node_plan.params_file]
    if overrides_file is not None:
        command += ['--params-file', overrides_file]
    for source, target in node_plan.remaps:
        command += ['-r', f'{source}:={target}']
    return command
