#!/usr/bin/env bash
# Build both packages against the ROS 2 prefix that the ros-<distro>-* wheels put into a venv.
# Usage: colcon_build.sh [VENV BUILD_BASE INSTALL_BASE LOG_BASE]   (default: Kilted's .venv build install log)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(pwd)/${1:-.venv}
build_base=${2:-build} install_base=${3:-install} log_base=${4:-log}
source "$venv/bin/activate"
export CMAKE_PREFIX_PATH=$venv AMENT_PREFIX_PATH=$venv
# Only our two packages: a search from '.' would also walk the venvs and the other distros' trees.
colcon --log-base "$log_base" build --base-paths clipseg_ros clipseg_ros_interfaces \
    --build-base "$build_base" --install-base "$install_base" --event-handlers console_direct- \
    --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF
