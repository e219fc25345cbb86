"""clipseg_ros.launch_args, and the installed launch files run against stand-in launch modules.

launch and launch_ros are not installable here, so the launch files are executed with minimal
stand-ins that record what they are given: that checks which arguments are declared and what
reaches launch_ros's Node; test_launch.py checks the real thing where launch is installed.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from clipseg_ros import launch_args
from clipseg_ros.launch_args import LaunchArgumentError

PROFILE = {launch_args.PROFILE_ENV: launch_args.fastdds_profile_file()}


def test_defaults_plan_the_documented_node():
    plan = launch_args.plan({}, environ={})
    assert plan.namespace == '/'
    assert plan.params_file == launch_args.default_params_file()
    assert plan.parameters == [launch_args.default_params_file()]
    assert plan.remaps == [('image', 'image'), ('image/compressed', 'image/compressed'),
                           ('image_mouse_left', 'image_mouse_left'),
                           ('depth', 'depth'), ('camera_info', 'camera_info')]
    assert plan.env == PROFILE
    assert plan.node_fqn == '/clipseg'
    assert launch_args.overrides_yaml(plan) is None


def test_overrides_only_when_given():
    plan = launch_args.plan({'model': '/models/clipseg', 'device': '', 'namespace': 'cam/'},
                            environ={})
    assert plan.overrides == {'model': '/models/clipseg'}
    assert plan.parameters[1] == {'model': '/models/clipseg'}
    assert plan.namespace == '/cam' and plan.node_fqn == '/cam/clipseg'


@pytest.mark.parametrize('base, value, expected', [
    (None, '', '/'), (None, 'a', '/a'), (None, '/a/', '/a'), ('/robot', 'cam', '/robot/cam'),
    ('/robot', '', '/robot'), ('/robot', '/cam', '/cam'), ('/', 'cam', '/cam')])
def test_namespace_as_launch_ros_makes_it(base, value, expected):
    assert launch_args.node_namespace(value, base) == expected


@pytest.mark.parametrize('environ', [{launch_args.PROFILE_ENV: '/mine.xml'},
                                     {launch_args.LEGACY_PROFILE_ENV: '/old.xml'}])
def test_a_profile_already_set_is_respected(environ):
    assert launch_args.plan({}, environ=environ).env == {}


def test_profile_can_be_turned_off():
    assert launch_args.plan({'use_fastdds_profile': 'false'}, environ={}).env == {}
    assert launch_args.plan({'use_fastdds_profile': 'True'}, environ={}).env == PROFILE
    with pytest.raises(LaunchArgumentError, match="use_fastdds_profile 'maybe' is not a boolean"):
        launch_args.plan({'use_fastdds_profile': 'maybe'}, environ={})


@pytest.mark.parametrize('arguments, expected', [
    ({'image': '/bad-topic'}, "image '/bad-topic' is not a valid ROS topic name: "),
    ({'image': ''}, "image '' is not a valid ROS topic name: "),
    ({'image': '/a//b'}, "image '/a//b' is not a valid ROS topic name: "),
    ({'namespace': '1cam'}, "namespace '1cam' is not a valid ROS namespace: "),
    ({'params_file': ''}, 'params_file is empty'),
    ({'params_file': '/'}, "params_file '/' is not a file"),
    ({'cameras': 'head,head'}, "cameras 'head,head': camera names must differ"),
    ({'cameras': 'head,1wrist'}, "cameras 'head,1wrist': camera name '1wrist' is not"),
    ({'cameras': 'head,'}, "cameras 'head,': '' (the unnamed camera) cannot be mixed"),
    ({'cameras': 'a,b', 'image': '/a/image'}, 'image names 1 topic(s) for 2 camera(s) (a, b)'),
    ({'cameras': 'a,b', 'depth': '/a/depth,/b/bad-depth'},
     "depth '/b/bad-depth' is not a valid ROS topic name: "),
])
def test_refusals_are_one_line_with_the_value(arguments, expected):
    with pytest.raises(LaunchArgumentError) as refused:
        launch_args.plan(arguments, environ={})
    assert str(refused.value).startswith(expected)
    assert '\n' not in str(refused.value)


def test_name_rules_without_rclpy(monkeypatch):
    # The documented rules stand in where rclpy's validators cannot be imported.
    for module in ('rclpy.validate_namespace', 'rclpy.validate_topic_name',
                   'rclpy.validate_full_topic_name', 'rclpy.expand_topic_name'):
        monkeypatch.setitem(sys.modules, module, None)
    assert launch_args.check_topic('image', '~/image', '/cam') == '~/image'
    assert launch_args.node_namespace('cam') == '/cam'
    with pytest.raises(LaunchArgumentError, match="image '/bad-topic' is not a valid"):
        launch_args.check_topic('image', '/bad-topic', '/')
    with pytest.raises(LaunchArgumentError, match="namespace 'a/1b' is not a valid"):
        launch_args.node_namespace('a/1b')


# ---------------------------------------------------------------- launch files, stand-in launch
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


@pytest.fixture
def stand_in_launch(monkeypatch):
    """Minimal launch / launch_ros modules recording what the launch files build."""
    modules = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.substitutions', 'launch.launch_description_sources',
        'launch_ros', 'launch_ros.actions')}
    modules['launch'].LaunchDescription = list
    for name in ('DeclareLaunchArgument', 'OpaqueFunction', 'IncludeLaunchDescription'):
        setattr(modules['launch.actions'], name, type(name, (_Recorded,), {}))
    modules['launch.substitutions'].LaunchConfiguration = _LaunchConfiguration
    modules['launch.launch_description_sources'].PythonLaunchDescriptionSource = _Recorded
    modules['launch_ros.actions'].Node = type('Node', (_Recorded,), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def load(file_name):
        path = launch_args.share_directory() / 'launch' / file_name
        spec = importlib.util.spec_from_file_location(file_name.replace('.', '_'), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()
    return load


def _declared(description):
    return {action.args[0]: action.kwargs['default_value'] for action in description
            if type(action).__name__ == 'DeclareLaunchArgument'}


def _run_node_function(description, environ=None, **given):
    configurations = {**_declared(description), **given}
    context = types.SimpleNamespace(launch_configurations=configurations,
                                    environment=environ or {})
    opaque = next(a for a in description if type(a).__name__ == 'OpaqueFunction')
    (node,) = opaque.kwargs['function'](context)
    return node.kwargs


def test_clipseg_launch_declares_and_hands_node_the_plan(stand_in_launch, tmp_path):
    description = stand_in_launch('clipseg.launch.py')
    assert _declared(description) == {
        'params_file': launch_args.default_params_file(), 'namespace': '', 'image': 'image',
        'depth': 'depth', 'camera_info': 'camera_info', 'model': '', 'device': '',
        'use_depth': '', 'use_fastdds_profile': 'true', 'cameras': ''}
    node = _run_node_function(description, namespace='robot', image='/cam/image_raw',
                              depth='/cam/aligned_depth', model='/models/m')
    assert node['package'] == 'clipseg_ros' and node['executable'] == 'clipseg_node'
    assert node['name'] == 'clipseg' and node['namespace'] == '/robot'
    assert node['parameters'] == [launch_args.default_params_file(), {'model': '/models/m'}]
    assert node['remappings'] == [('image', '/cam/image_raw'),
                                  ('image/compressed', '/cam/image_raw/compressed'),
                                  ('image_mouse_left', '/cam/image_raw_mouse_left'),
                                  ('depth', '/cam/aligned_depth'),
                                  ('camera_info', 'camera_info')]
    assert node['additional_env'] == PROFILE
    node = _run_node_function(description, environ={launch_args.LEGACY_PROFILE_ENV: '/x.xml'})
    assert node['additional_env'] == {}


@pytest.mark.parametrize('given, expected', [
    ({'params_file': '/typo.yaml'}, "params_file '/typo.yaml' does not exist"),
    ({'image': '/bad-topic'}, "image '/bad-topic' is not a valid ROS topic name"),
    ({'depth': 'depth image'}, "depth 'depth image' is not a valid ROS topic name"),
])
def test_clipseg_launch_refuses_before_the_node(stand_in_launch, given, expected):
    description = stand_in_launch('clipseg.launch.py')
    with pytest.raises(LaunchArgumentError) as refused:
        _run_node_function(description, **given)
    assert str(refused.value).startswith(expected)
    assert 'object at 0x' not in str(refused.value)


def test_example_camera_declares_and_forwards_everything(stand_in_launch):
    description = stand_in_launch('example_camera.launch.py')
    declared = _declared(description)
    assert declared['namespace'] == 'front_camera'
    assert declared['image'] == '/front_camera/color/image_raw'
    assert set(declared) == {name for name, _, _ in launch_args.ARGUMENTS}
    (include,) = [a for a in description if type(a).__name__ == 'IncludeLaunchDescription']
    assert Path(include.args[0].args[0]).name == 'clipseg.launch.py'
    forwarded = dict(include.kwargs['launch_arguments'])
    assert {name: value.name for name, value in forwarded.items()} == {n: n for n in declared}


def test_overrides_are_typed_as_launch_ros_reads_them():
    plan = launch_args.plan({'model': '/models/m', 'device': 'cuda:0', 'use_depth': 'true'},
                            environ={})
    written = yaml.safe_load(launch_args.overrides_yaml(plan))
    assert written == {'/clipseg': {'ros__parameters': {
        'model': '/models/m', 'device': 'cuda:0', 'use_depth': True}}}
    assert ('depth', 'depth') in plan.remaps and ('camera_info', 'camera_info') in plan.remaps


def test_cameras_plan_one_node_with_each_cameras_topics():
    plan = launch_args.plan({'cameras': 'head, wrist', 'namespace': 'robot',
                             'image': '/head_cam/color/image_raw,/wrist_cam/color/image_raw',
                             'camera_info': '/head_cam/color/camera_info,wrist_info'},
                            environ={})
    assert plan.overrides == {'cameras': ['head', 'wrist']}
    assert plan.remaps == [
        ('head/image', '/head_cam/color/image_raw'),
        ('head/image/compressed', '/head_cam/color/image_raw/compressed'),
        ('head/image_mouse_left', '/head_cam/color/image_raw_mouse_left'),
        ('wrist/image', '/wrist_cam/color/image_raw'),
        ('wrist/image/compressed', '/wrist_cam/color/image_raw/compressed'),
        ('wrist/image_mouse_left', '/wrist_cam/color/image_raw_mouse_left'),
        ('head/camera_info', '/head_cam/color/camera_info'),
        ('wrist/camera_info', 'wrist_info')]  # depth not given: each camera keeps c/depth
    written = yaml.safe_load(launch_args.overrides_yaml(plan))
    assert written == {'/robot/clipseg': {'ros__parameters': {'cameras': ['head', 'wrist']}}}
    # Without topics, camera c reads c/image under the node's namespace.
    assert launch_args.plan({'cameras': 'head'}, environ={}).remaps == []


def test_clipseg_launch_hands_node_the_camera_list(stand_in_launch):
    node = _run_node_function(stand_in_launch('clipseg.launch.py'), cameras='head,wrist',
                              image='/head/image_raw,/wrist/image_raw')
    assert node['parameters'] == [launch_args.default_params_file(),
                                  {'cameras': ['head', 'wrist']}]
    assert ('wrist/image', '/wrist/image_raw') in node['remappings']


def test_topic_lists_follow_the_cameras_of_the_params_file(tmp_path):
    params = tmp_path / 'robot.yaml'
    params.write_text("/**/clipseg:\n  ros__parameters:\n    cameras: [head, wrist]\n")
    plan = launch_args.plan({'params_file': str(params), 'image': '/h/image_raw,/w/image_raw'},
                            environ={})
    assert plan.overrides == {}  # the file's list stands
    assert ('head/image', '/h/image_raw') in plan.remaps
    assert ('wrist/image', '/w/image_raw') in plan.remaps
    with pytest.raises(LaunchArgumentError, match=r'image names 1 topic\(s\) for 2 camera'):
        launch_args.plan({'params_file': str(params), 'image': '/h/image_raw'}, environ={})
    # The launch argument wins over the file.
    plan = launch_args.plan({'params_file': str(params), 'cameras': 'left',
                             'image': '/l/image_raw'}, environ={})
    assert plan.remaps == [('left/image', '/l/image_raw'),
                           ('left/image/compressed', '/l/image_raw/compressed'),
                           ('left/image_mouse_left', '/l/image_raw_mouse_left')]
