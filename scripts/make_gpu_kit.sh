#!/usr/bin/env bash
# Build .gpukit/: everything an offline CPython 3.12 x86_64 machine (no ROS, no network) needs to
# run bench/node_bench.py.  Consumed there by `source scripts/gpu_kit_env.sh`.
#   .gpukit/kit.tar.xz   wheels/  cp312 runtime ros-* wheels (--no-deps, the full ros-* closure of
#                                 the runtime packages), pyyaml, typing_extensions, pip
#                        install/ colcon merge-install of clipseg_ros + clipseg_ros_interfaces,
#                                 built here against the same cp312 ROS prefix
#   .gpukit/MANIFEST.txt what is inside, with the archive's sha256
# The wheels are re-zipped uncompressed and the whole lot is xz'ed as one stream: the ROS wheels
# carry every shared library three times (libX.so, .so.N, .so.N.M), which solid xz deduplicates
# (45 MiB of wheels -> ~12 MiB).  Nothing inside the repository is written except .gpukit/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py312=${PYTHON312:-/root/.pyenv/versions/3.12.1/bin/python3.12}   # any CPython 3.12 will do
work=${GPUKIT_WORK:-/tmp/gpukit}          # build venv, colcon build/install/log, staging
venv=$work/venv312
kit=$repo/.gpukit
runtime_roots='ros-kilted-rclpy ros-kilted-rmw-fastrtps-cpp ros-kilted-sensor-msgs
  ros-kilted-std-msgs ros-kilted-std-srvs ros-kilted-geometry-msgs ros-kilted-diagnostic-msgs
  ros-kilted-lifecycle-msgs ros-kilted-builtin-interfaces ros-kilted-ament-index-python'

# 1. A Python 3.12 venv with the same ROS wheels + build tooling as `make setup` (no torch).
deps_stamp=$(cat "$repo/scripts/requirements-ros-kilted.txt" "$repo/scripts/fix_ros_cmake_paths.py" | sha256sum)
if [ "$(cat "$venv/.gpukit-deps" 2>/dev/null)" != "$deps_stamp" ]; then
    rm -rf "$venv"
    "$py312" -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$repo/scripts/requirements-ros-kilted.txt" \
        'setuptools<80' colcon-common-extensions==0.3.0 'numpy>=1.26,<3'
    # Wheels were built under /opt/python/cp312-cp312; re-point their CMake include dirs.
    "$venv/bin/python" "$repo/scripts/fix_ros_cmake_paths.py"
    echo "$deps_stamp" > "$venv/.gpukit-deps"
fi

# 2. colcon build of both packages, out of tree; merged layout = one prefix to point env vars at.
rm -rf "$work/build" "$work/install" "$work/log" "$work/stage"
(
    source "$venv/bin/activate"
    export CMAKE_PREFIX_PATH=$venv AMENT_PREFIX_PATH=$venv
    colcon --log-base "$work/log" build --base-paths "$repo" --build-base "$work/build" \
        --install-base "$work/install" --merge-install --event-handlers console_direct- \
        --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF
)
test -x "$work/install/lib/clipseg_ros/clipseg_node"

# 3. cp312 wheels: every ros-* distribution the runtime roots pull in, at the versions built against.
"$venv/bin/python" - $runtime_roots > "$work/runtime-wheels.txt" <<'EOF'
import importlib.metadata as md, re, sys
norm = lambda name: re.sub(r'[-_.]+', '-', name).lower()
seen, todo = {}, list(sys.argv[1:])
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    dist = md.distribution(name)
    seen[name] = dist.version
    todo += [re.split(r'[ ;<>=!~\[(]', r, maxsplit=1)[0] for r in dist.requires or []
             if 'extra ==' not in r]
print('\n'.join(f'{n}=={v}' for n, v in sorted(seen.items()) if n.startswith('ros-')))
EOF
mkdir -p "$work/stage/wheels" "$work/dl"
rm -f "$work/dl"/*.whl
"$venv/bin/pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work/dl" \
    -r "$work/runtime-wheels.txt" pyyaml==6.0.4 typing-extensions==4.16.0 pip==26.3 \
    2> >(grep -v 'is ignored' >&2)
test "$(ls "$work/dl"/ros*.whl | wc -l)" -eq "$(wc -l < "$work/runtime-wheels.txt")"
# Re-zip uncompressed (same files, same RECORD) so that xz sees, and dedups, the raw bytes.
"$venv/bin/python" - "$work/dl" "$work/stage/wheels" <<'EOF'
import copy, pathlib, sys, zipfile
src, dst = map(pathlib.Path, sys.argv[1:])
for wheel in sorted(src.glob('*.whl')):
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(dst / wheel.name, 'w') as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info = copy.copy(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
EOF

# 4. The install tree, without bytecode (it names the build paths) or colcon's setup scripts.
cp -a "$work/install" "$work/stage/install"
find "$work/stage/install" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$work/stage/install"/{setup,local_setup}.* "$work/stage/install/_local_setup_util"*

# 5. Archive + manifest.
rm -rf "$kit" && mkdir -p "$kit"
tar -C "$work/stage" -cf - wheels install | xz -T1 -9e > "$kit/kit.tar.xz"
{
    echo "# made by scripts/make_gpu_kit.sh on $(date -u +%FT%TZ) for CPython 3.12 x86_64"
    (cd "$kit" && sha256sum kit.tar.xz)
    ls "$work/stage/wheels"
} > "$kit/MANIFEST.txt"
du -sh "$kit"
