"""The `cameras` parameter's rules, free of rclpy and torch (the launch file checks them too)."""

import re

MAX_CAMERAS = 16
# Relative ROS name tokens separated by '/'; '__' is reserved in ROS names.
_CAMERA_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


def camera_names_problem(names: list[str]) -> str | None:
    """Why a `cameras` list is unacceptable, or None."""
    if not names:
        return "name at least one camera ('' is the unnamed one, with the plain topic names)"
    if len(names) > MAX_CAMERAS:
        return f'{len(names)} cameras exceed the limit of {MAX_CAMERAS}'
    if '' in names and len(names) > 1:
        return "'' (the unnamed camera) cannot be mixed with named cameras"
    for name in names:
        if name and (not _CAMERA_NAME.fullmatch(name) or '__' in name):
            return (f"camera name '{name}' is not a relative ROS name: use tokens of letters, "
                    'digits and _ separated by /, none starting with a digit')
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        return f'camera names must differ: {duplicates} given more than once'
    return None


def topic_prefix(camera: str) -> str:
    return camera + '/' if camera else ''


def served_camera(cameras: list[str], name: str) -> str:
    """The camera a request names ('' = the first one served), or ValueError listing them."""
    if not name:
        return cameras[0]
    if name not in cameras:
        served = ', '.join(f"'{c}'" for c in cameras)
        shown = name if len(name) <= 80 else name[:80] + '...'
        raise ValueError(f"no camera '{shown}': this node serves {served}")
    return name
