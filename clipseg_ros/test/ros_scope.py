"""
Which test modules touch ROS: what a second ROS distro needs to run again.

`make test` runs the whole suite on the first distro. The ROS-free tests (engine, instances,
tracks, refinement...) run the same Python packages on every distro (scripts/requirements-py.txt
is shared), so the later distros run only the modules that import ROS, directly or through
what they import, run or load: test helpers, clipseg_ros modules, and bench/ or scripts/ files
named in their source (started as a subprocess or loaded by name). clipseg_ros.core is ROS-free
by design (test_core_boundary.py holds it to that), so the search does not go into it.
A module that touches ROS only to run something whose ROS side is tested elsewhere (the
benchmarks' smoke runs) says so with a module-level FIRST_DISTRO_ONLY = '<why>'.
"""

import ast
from functools import lru_cache
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = TEST_DIR.parent            # clipseg_ros/ (the ament package)
REPO_ROOT = PACKAGE_ROOT.parent
SCRIPT_DIRS = (REPO_ROOT / 'bench', REPO_ROOT / 'scripts')
ROS_TOP_LEVEL = frozenset({'rclpy', 'launch', 'launch_ros', 'launch_testing', 'ament_index_python',
                           'rosidl_runtime_py', 'rosbag2_py', 'message_filters', 'cv_bridge',
                           'tf2_ros'})
ROS_SUFFIXES = ('_msgs', '_srvs', '_interfaces')


def is_ros_module(name: str) -> bool:
    top = name.split('.')[0]
    return top in ROS_TOP_LEVEL or top.endswith(ROS_SUFFIXES)


def _local_file(module: str) -> Path | None:
    """The source file of a module of this checkout (package or test helper), else None."""
    parts = module.split('.')
    if parts[:2] == ['clipseg_ros', 'core']:
        return None
    if parts[0] == 'clipseg_ros':
        base = PACKAGE_ROOT.joinpath(*parts)
    elif len(parts) == 1:
        base = TEST_DIR / parts[0]
    else:
        return None
    for candidate in (base.with_suffix('.py'), base / '__init__.py'):
        if candidate.is_file():
            return candidate
    return None


def _named_scripts(text: str) -> list[Path]:
    """bench/ and scripts/ files a string names: 'x.py', 'x' or 'bench/x.py'."""
    name = Path(text).name
    if not name or len(text) > 200:
        return []
    stem = name[:-3] if name.endswith('.py') else name
    return [path for folder in SCRIPT_DIRS if (path := folder / f'{stem}.py').is_file()]


def _dependencies(tree: ast.AST) -> tuple[set[str], list[Path]]:
    modules, files = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f'{node.module}.{alias.name}' for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            files.extend(_named_scripts(node.value))
    return modules, files


@lru_cache(maxsize=None)
def touches_ros(path: Path) -> bool:
    """Whether a Python file imports ROS, directly or through this checkout's files it uses."""
    seen: set[Path] = set()
    pending = [Path(path).resolve()]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        modules, files = _dependencies(ast.parse(current.read_text(), str(current)))
        if any(is_ros_module(module) for module in modules):
            return True
        pending.extend(file for module in modules if (file := _local_file(module)) is not None)
        pending.extend(files)
    return False


def first_distro_only(path: Path) -> str | None:
    """The reason a test module gives for running on the first distro only, else None."""
    for node in ast.parse(Path(path).read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(
                isinstance(target, ast.Name) and target.id == 'FIRST_DISTRO_ONLY'
                for target in node.targets):
            return str(node.value.value)
    return None


def runs_on_every_distro(path: Path) -> bool:
    """What a later distro runs: the modules that touch ROS and do not opt out."""
    return touches_ros(path) and first_distro_only(path) is None
