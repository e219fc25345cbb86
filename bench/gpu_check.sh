#!/usr/bin/env bash
# GPU checks and benchmarks in one command, for a CUDA machine with torch + transformers and no
# ROS (e.g. the lent H100/H200): the CUDA fast-path tests, the engine benchmark for each GPU
# configuration, a profile of the fastest one, the camera-batch benchmark and, where the ROS kit
# travelled (.gpukit), the node and several-camera benchmarks end to end.  Wheels in .whl/ (e.g. the transformers version CI pins) are
# installed to a scratch folder first.  Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/clipseg_gpu_check}
mkdir -p "$out"
if compgen -G '.whl/*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/clipseg_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/clipseg_site
fi
export PYTHONPATH=$PWD/clipseg_ros${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
transformers.__version__, torch.cuda.get_device_name())'
python3 -m pytest -q -p no:cacheprovider clipseg_ros/test/test_engine_cuda.py \
    2>&1 | tee "$out/cuda_tests.txt"
tests_status=${PIPESTATUS[0]}  # the benchmarks still run; the script's status says the tests failed
repeats=${REPEATS:-100}
# dtype:compile_mode pairs; float32 eager is the exact path the CPU equivalence test covers.
configs=${CONFIGS:-float16:cuda_graphs bfloat16:cuda_graphs float16:none float32:none}
for config in $configs; do
    dtype=${config%%:*} mode=${config##*:}
    python3 bench/engine_bench.py --device cuda --dtype "$dtype" --compile-mode "$mode" \
        --warmup 10 --repeats "$repeats" 2>&1 | tee "$out/engine_${dtype}_${mode}.txt"
done
python3 bench/engine_profile.py --device cuda --dtype float16 --compile-mode cuda_graphs \
    --prompts 1 2>&1 | tee "$out/profile_float16_cuda_graphs_n1.txt"
# Several cameras' frames as one batch against one call per frame (float16, CUDA graphs).
python3 bench/batch_bench.py --device cuda --cameras 2,3,4,8 --prompts 1,4,13 \
    --warmup 10 --repeats 50 2>&1 | tee "$out/batch_bench.txt"
# The refinement's cost with its frame-size work on the GPU (cell statistics on the host).
python3 bench/refine_bench.py --device cuda --threads 1 2>&1 | tee "$out/refine_bench.txt"
# The node end to end, where the ROS kit was carried (.gpukit, made by scripts/make_gpu_kit.sh).
if [ -f .gpukit/kit.tar.xz ]; then
    (source scripts/gpu_kit_env.sh && python bench/node_bench.py --device cuda \
        --dtype float16 --compile-mode cuda_graphs --frames 60 2>&1 | tee "$out/node_bench.txt"
     # camera to mask p50/p99 with every output subscribed (overlay, instances too), as rviz
     # and a planner together subscribe: the node's own work decides the rate at GPU speed
     python bench/node_bench.py --device cuda --dtype float16 --compile-mode cuda_graphs \
        --all-outputs --sizes 640x480,1280x720 --prompts 1,4 --frames 60 \
        2>&1 | tee "$out/node_bench_all_outputs.txt"
     # the host's share: the node without inference against a minimal rclpy echo
     python bench/transport_bench.py 2>&1 | tee "$out/transport_bench.txt"
     # every output, with and without depth, a table scene's masks (the seeded worst cases
     # are measured on the development machine): node CPU a frame against an echo
     python bench/frame_cost_bench.py --sizes 640x480,1280x720 --both-depths --masks objects \
        2>&1 | tee "$out/frame_cost_bench.txt"
     # 1, 2 and 4 cameras: one node against as many single-camera nodes
     python bench/cameras_bench.py --device cuda --rate 30 --duration 20 \
        2>&1 | tee "$out/cameras_bench.txt")
fi
exit "$tests_status"
