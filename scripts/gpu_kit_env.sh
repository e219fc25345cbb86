# Source me (bash) from the repository root on the offline GPU machine:
#     source scripts/gpu_kit_env.sh && python bench/node_bench.py --device cuda ...
# The counterpart of env.sh there: no ROS and no network, but a CPython 3.12 with torch.  Makes a
# venv on top of that python3 (torch, transformers, numpy, cv2 stay visible), installs the ROS 2
# wheels and the prebuilt colcon install from .gpukit/kit.tar.xz (made by scripts/make_gpu_kit.sh)
# plus .whl/*.whl offline, and exports the environment env.sh would.  Re-sourcing with the same kit
# reuses the venv.  Knobs: CLIPSEG_GPU_PYTHON (python3), CLIPSEG_GPU_VENV (/tmp/clipseg-gpu-venv).
# Takes ~15 s the first time (unpack + pip), ~2 s when the venv is reused.
_gk_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_gk_venv=${CLIPSEG_GPU_VENV:-/tmp/clipseg-gpu-venv}

_gk_setup() (
    set -euo pipefail
    shopt -s nullglob
    base=${CLIPSEG_GPU_PYTHON:-python3}
    "$base" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || {
        echo "gpu_kit_env: $base is not CPython 3.12; the kit's wheels are cp312" >&2; exit 1; }
    test -f "$_gk_repo/.gpukit/kit.tar.xz" || {
        echo 'gpu_kit_env: no .gpukit/kit.tar.xz (run scripts/make_gpu_kit.sh and carry .gpukit)' >&2
        exit 1; }
    stamp=$(cat "$_gk_repo/.gpukit/kit.tar.xz" "$_gk_repo"/.whl/*.whl 2>/dev/null | sha256sum)
    py=$_gk_venv/bin/python
    install=$_gk_venv/kit/install
    if [ "$(cat "$_gk_venv/.gpukit-stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$_gk_venv"
        # --without-pip: ensurepip may be missing there; pip runs from the kit's wheel instead.
        "$base" -m venv --without-pip --system-site-packages "$_gk_venv"
        # If python3 is itself a venv (/opt/torch/.venv), --system-site-packages only reaches the
        # interpreter it was made from, not torch's venv: add that python's site dirs (and .pths).
        "$base" -c 'import site; print("\n".join(f"import site; site.addsitedir({p!r})"
            for p in site.getsitepackages()))' > "$_gk_venv/lib/python3.12/site-packages/zz_base.pth"
        "$py" -c 'import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$_gk_repo/.gpukit/kit.tar.xz" "$_gk_venv/kit"
        wheels=("$_gk_venv"/kit/wheels/ros*.whl "$_gk_repo"/.whl/*.whl)
        # pyyaml/typing_extensions: rclpy needs them; the machine's own copies win when present.
        "$py" -c 'import yaml' 2>/dev/null || wheels+=("$_gk_venv"/kit/wheels/pyyaml-*.whl)
        "$py" -c 'import typing_extensions' 2>/dev/null ||
            wheels+=("$_gk_venv"/kit/wheels/typing_extensions-*.whl)
        pip_whl=$(ls "$_gk_venv"/kit/wheels/pip-*.whl)
        # --no-compile: byte-compiling every module triples the time; imports compile what they use.
        "$py" "$pip_whl/pip" install --quiet --no-index --no-deps --no-cache-dir --no-compile \
            --disable-pip-version-check "${wheels[@]}"
        # The entry point names the build machine's python; point it at this venv's.
        sed -i "1s|^#!.*|#!$py|" "$install/lib/clipseg_ros/clipseg_node"
        echo "$stamp" > "$_gk_venv/.gpukit-stamp"
    fi
    # clipseg_ros is pure Python: refresh the installed copy from this checkout every time (what
    # a rebuild would do), so the kit need not be remade for Python edits.  Interfaces are
    # compiled into the kit: refuse to run if they changed since it was made.
    for def in "$_gk_repo"/clipseg_ros_interfaces/{msg,srv}/*; do
        cmp -s "$def" "$install/share/clipseg_ros_interfaces/${def#"$_gk_repo"/*/}" || {
            echo "gpu_kit_env: $def differs from the kit's; rerun scripts/make_gpu_kit.sh" >&2
            exit 1; }
    done
    site=$install/lib/python3.12/site-packages
    rm -rf "$site/clipseg_ros" && cp -r "$_gk_repo/clipseg_ros/clipseg_ros" "$site/"
    cp "$_gk_repo"/clipseg_ros/config/* "$install/share/clipseg_ros/config/"
    cp "$_gk_repo"/clipseg_ros/launch/*.launch.py "$install/share/clipseg_ros/launch/"
)

# Not `if _gk_setup`: bash would ignore set -e inside it.
_gk_setup
_gk_rc=$?
if [ $_gk_rc -eq 0 ]; then
    _gk_install=$_gk_venv/kit/install
    source "$_gk_venv/bin/activate"
    # What install/local_setup.bash + env.sh would set for the merged install and the ROS prefix.
    export AMENT_PREFIX_PATH=$_gk_install:$_gk_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
    export CMAKE_PREFIX_PATH=$_gk_install:$_gk_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export PYTHONPATH=$_gk_install/lib/python3.12/site-packages${PYTHONPATH:+:$PYTHONPATH}
    export LD_LIBRARY_PATH=$_gk_install/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # Discovery stays on this machine, as in env.sh.
    export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
    export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
    # Fail now, not mid-benchmark, if any import the node or the bench needs is missing.
    python -c 'import os, rclpy, clipseg_ros_interfaces.srv, sensor_msgs.msg, clipseg_ros
from ament_index_python.packages import get_package_prefix as prefix
node = os.path.join(prefix("clipseg_ros"), "lib/clipseg_ros/clipseg_node")
assert os.access(node, os.X_OK), node
print("gpu_kit_env: ROS ok; node", node)
if os.environ.get("CLIPSEG_GPU_NO_TORCH") != "1":  # 1 only where no cp312 torch exists (tests)
    import numpy, torch, transformers
    print("gpu_kit_env: torch", torch.__version__, "cuda", torch.cuda.is_available(),
          "| transformers", transformers.__version__, "| numpy", numpy.__version__)' || { echo 'gpu_kit_env: import check FAILED' >&2; false; }
    _gk_rc=$?
else
    echo 'gpu_kit_env: setup FAILED (see above)' >&2
fi
unset -f _gk_setup
unset _gk_repo _gk_venv _gk_install
return $_gk_rc 2>/dev/null || exit $_gk_rc
