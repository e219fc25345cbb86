# Source me (bash): `source ./env.sh`.  Gives a shell with the venv's ROS 2 prefix and the colcon
# overlay of this repository, so clipseg_node, clipseg_ros_interfaces and the tests are importable.
_clipseg_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
if [ ! -f "$_clipseg_root/install/local_setup.bash" ]; then
    echo "clipseg_ros: not built yet, run 'make setup' first" >&2
    return 1 2>/dev/null || exit 1
fi
source "$_clipseg_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$_clipseg_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_clipseg_root/.venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# Discovery stays on this machine: tests and demos must not talk to other hosts' nodes.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
source "$_clipseg_root/install/local_setup.bash"
unset _clipseg_root
