"""
The line between the floors: ``clipseg_ros.core`` imports no ROS and nothing of the node.

Two checks, because each misses what the other sees: a fresh interpreter that imports every core
module and then looks at ``sys.modules`` (catches ROS pulled in through a third-party import), and
a reading of every import statement in the core's source (catches an import inside a function,
which runs only when called). Each check is also run on a small package made to break the rule,
so that a check that cannot fail would fail here.
"""

import ast
import json
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import clipseg_ros.core

CORE_DIR = Path(clipseg_ros.core.__file__).parent
PACKAGE_ROOT = CORE_DIR.parent.parent

# Top-level module names that are ROS. ament_index_python is not among them: it is a pure-Python
# reading of the install's share folders, imported only when a ``package://`` model is resolved,
# and its absence is a clear error there, not a failed import of the core.
ROS_TOP_LEVEL = ('rclpy', 'rcl_interfaces', 'rosidl_runtime_py', 'rosidl_parser', 'rpyutils',
                 'launch', 'launch_ros', 'launch_testing', 'clipseg_ros_interfaces',
                 'builtin_interfaces', 'cv_bridge', 'message_filters', 'tf2_ros')


def is_forbidden(module: str, core_package: str) -> bool:
    """Whether a core module may not import ``module`` (a dotted name)."""
    top = module.split('.')[0]
    if top in ROS_TOP_LEVEL or top.endswith('_msgs') or top.endswith('_srvs'):
        return True
    package = core_package.split('.')[0]
    if top == package:
        # The package's own root and the core itself are fine; any other subpackage is the node.
        return module != package and not (module == core_package
                                          or module.startswith(core_package + '.'))
    return False


IMPORT_ALL_CORE = textwrap.dedent('''
    import importlib, json, pkgutil, sys
    package = importlib.import_module(sys.argv[1])
    names = [sys.argv[1]] + [info.name for info in pkgutil.walk_packages(
        package.__path__, prefix=sys.argv[1] + '.')]
    for name in names:
        importlib.import_module(name)
    print(json.dumps({'imported': names, 'modules': sorted(sys.modules)}))
''')


def modules_after_import(core_package: str, path_entry: Path) -> tuple[list[str], list[str]]:
    """Import every module of ``core_package`` in a fresh interpreter; what it imported."""
    completed = subprocess.run(
        [sys.executable, '-c', IMPORT_ALL_CORE, core_package], capture_output=True, text=True,
        timeout=240, check=False,
        env={**os.environ, 'PYTHONPATH': f'{path_entry}:' + os.environ.get('PYTHONPATH', '')})
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report['imported'], report['modules']


def forbidden_in_sys_modules(core_package: str, path_entry: Path) -> list[str]:
    imported, modules = modules_after_import(core_package, path_entry)
    assert len(imported) > 1
    return [m for m in modules if is_forbidden(m, core_package)]


def forbidden_import_statements(core_dir: Path, core_package: str) -> list[str]:
    """``file:line module`` for every import statement in ``core_dir`` that breaks the rule."""
    found = []
    for path in sorted(core_dir.rglob('*.py')):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file
                base = path.parent.relative_to(core_dir.parent)
                parts = list(base.parts)[:len(base.parts) - node.level + 1]
                names = ['.'.join(parts + ([node.module] if node.module else []))]
            else:
                continue
            found += [f'{path.name}:{node.lineno} {name}' for name in names
                      if is_forbidden(name, core_package)]
    return found


def test_importing_the_core_imports_no_ros_and_no_node_module() -> None:
    assert forbidden_in_sys_modules('clipseg_ros.core', PACKAGE_ROOT) == []


def test_no_core_source_line_imports_ros_or_the_node() -> None:
    assert forbidden_import_statements(CORE_DIR, 'clipseg_ros.core') == []


def make_broken_package(root: Path) -> None:
    """A package shaped like ours whose core imports rclpy lazily and the node eagerly."""
    core = root / 'boundary_probe' / 'core'
    core.mkdir(parents=True)
    (root / 'boundary_probe' / '__init__.py').write_text('')
    (root / 'boundary_probe' / 'node_side.py').write_text('import rclpy\n')
    (core / '__init__.py').write_text('')
    (core / 'eager.py').write_text('from boundary_probe import node_side\n')
    (core / 'lazy.py').write_text('def later():\n    from sensor_msgs.msg import Image\n')


def test_both_checks_catch_a_core_that_breaks_the_rule(tmp_path: Path) -> None:
    make_broken_package(tmp_path)
    statements = forbidden_import_statements(tmp_path / 'boundary_probe' / 'core',
                                             'boundary_probe.core')
    assert statements == ['eager.py:1 boundary_probe.node_side', 'lazy.py:2 sensor_msgs.msg',
                          'lazy.py:2 sensor_msgs.msg.Image']
    in_memory = forbidden_in_sys_modules('boundary_probe.core', tmp_path)
    assert 'rclpy' in in_memory and 'boundary_probe.node_side' in in_memory


def test_the_rule_itself() -> None:
    core = 'clipseg_ros.core'
    assert not is_forbidden('clipseg_ros.core.engine', core)
    assert not is_forbidden('clipseg_ros', core)
    assert not is_forbidden('torch.nn', core)
    assert is_forbidden('clipseg_ros.node', core)
    assert is_forbidden('clipseg_ros.tools.scenes', core)
    assert is_forbidden('clipseg_ros.corecopy', core)
    assert is_forbidden('geometry_msgs.msg', core)
    assert is_forbidden('rclpy.qos', core)
    assert is_forbidden('launch_ros.actions', core)
