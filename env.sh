# Source me (bash): `source ./env.sh [kilted|jazzy]` (default kilted; name it even then when
# sourcing from a script, whose own $1 would otherwise be taken).  Gives a shell with that
# distro's venv ROS 2 prefix and the colcon overlay of this repository, so clipseg_node,
# clipseg_ros_interfaces and the tests are importable.  One distro per shell.
_clipseg_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
_clipseg_distro=${1:-kilted}
case $_clipseg_distro in
    kilted) _clipseg_suffix= ;;   # the original, unsuffixed .venv and install
    jazzy) _clipseg_suffix=-jazzy ;;
    *) _clipseg_suffix=invalid ;;
esac
if [ "$_clipseg_suffix" = invalid ]; then
    echo "clipseg_ros: unknown ROS 2 distro '$_clipseg_distro' (kilted or jazzy)" >&2
elif [ -n "${CLIPSEG_ROS_DISTRO:-}" ] && [ "$CLIPSEG_ROS_DISTRO" != "$_clipseg_distro" ]; then
    # Two prefixes on one path would mix their libraries: refuse rather than half-switch.
    echo "clipseg_ros: this shell already has $CLIPSEG_ROS_DISTRO; open a new shell for $_clipseg_distro" >&2
    _clipseg_suffix=invalid
elif [ ! -f "$_clipseg_root/install$_clipseg_suffix/local_setup.bash" ]; then
    echo "clipseg_ros: $_clipseg_distro not built yet, run 'make setup ROS_DISTRO=$_clipseg_distro' first" >&2
    _clipseg_suffix=invalid
fi
if [ "$_clipseg_suffix" = invalid ]; then
    unset _clipseg_root _clipseg_distro _clipseg_suffix
    return 1 2>/dev/null || exit 1
fi
_clipseg_venv=$_clipseg_root/.venv$_clipseg_suffix
source "$_clipseg_venv/bin/activate"
export CLIPSEG_ROS_DISTRO=$_clipseg_distro ROS_DISTRO=$_clipseg_distro
export AMENT_PREFIX_PATH="$_clipseg_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_clipseg_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# Discovery stays on this machine: tests and demos must not talk to other hosts' nodes.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
source "$_clipseg_root/install$_clipseg_suffix/local_setup.bash"
unset _clipseg_root _clipseg_distro _clipseg_suffix _clipseg_venv
