#!/usr/bin/env bash
# Build both packages against the ROS 2 prefix that the ros-kilted-* wheels put into the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(pwd)/.venv
source "$venv/bin/activate"
export CMAKE_PREFIX_PATH=$venv AMENT_PREFIX_PATH=$venv
colcon build --event-handlers console_direct- \
    --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF
