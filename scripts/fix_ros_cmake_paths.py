"""Re-point include dirs baked into the ROS wheels' exported CMake targets.

The ros-kilted-* wheels were built under /opt/python/cp311-cp311, and their generated
``*__rosidl_generator_pyExport.cmake`` files name that interpreter's Python and numpy include
directories.  CMake refuses imported targets whose include dirs do not exist, so any package that
generates interfaces against this prefix fails to configure.  We rewrite those paths, inside the
virtualenv only, to this interpreter's headers and the venv's numpy.  Idempotent.
"""

import pathlib
import re
import sys
import sysconfig

import numpy

WHEEL_BUILD_PREFIX = re.compile(r'/opt/python/cp3\d+-cp3\d+')


def replacement_for(path: str) -> str:
    """Return the local directory standing in for a path under the wheels' build prefix."""
    if '/numpy/' in path:
        return numpy.get_include()
    if '/include/python' in path:
        return sysconfig.get_paths()['include']
    raise ValueError(f'no local equivalent known for {path}')


def main() -> int:
    venv = pathlib.Path(sys.prefix)
    pattern = re.compile(WHEEL_BUILD_PREFIX.pattern + r'[^;"\s]*')
    changed = 0
    for cmake_file in (venv / 'share').glob('*/cmake/*.cmake'):
        text = cmake_file.read_text()
        if not WHEEL_BUILD_PREFIX.search(text):
            continue
        fixed = pattern.sub(lambda match: replacement_for(match.group(0)), text)
        cmake_file.write_text(fixed)
        changed += 1
    for directory in (numpy.get_include(), sysconfig.get_paths()['include']):
        if not pathlib.Path(directory).is_dir():
            print(f'error: include directory {directory} does not exist', file=sys.stderr)
            return 1
    print(f're-pointed wheel include paths in {changed} CMake file(s) under {venv}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
