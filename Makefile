# One place that knows how to set up, build, test, demo and benchmark clipseg_ros.
# Every target works from a fresh clone; `make setup` is idempotent (stamp files record what is done).

SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.clipseg-deps-installed
BUILD_STAMP := install/.clipseg-built
REQUIREMENTS := scripts/requirements-ros.txt scripts/requirements-py.txt
PACKAGE_SOURCES := $(shell find clipseg_ros clipseg_ros_interfaces -type f \
	-not -path 'clipseg_ros/test/*' -not -path '*/__pycache__/*' -not -path '*/.pytest_cache/*' -not -name '*.pyc' | sort)
PYTEST_ARGS ?=
# e.g. make bench BENCH_ARGS='--device cuda --dtype float16 --compile-mode cuda_graphs'
BENCH_ARGS ?=

.PHONY: setup test demo bench bench-node bench-transport fuzz soak clean

setup: $(BUILD_STAMP)

$(PY):
	@scripts/step.sh 'create virtualenv' $(PYTHON_BOOTSTRAP) -m venv $(VENV)

$(DEPS_STAMP): $(REQUIREMENTS) scripts/fix_ros_cmake_paths.py | $(PY)
	@scripts/step.sh 'install Python and ROS 2 wheels' \
		$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	@scripts/step.sh 're-point ROS wheel CMake include paths' $(PY) scripts/fix_ros_cmake_paths.py
	@touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(PACKAGE_SOURCES)
	@scripts/step.sh 'colcon build' scripts/colcon_build.sh
	@touch $@

test: setup
	@source ./env.sh && python -m pytest clipseg_ros/test $(PYTEST_ARGS)

demo: setup
	@source ./env.sh && python scripts/demo.py

bench: setup
	@source ./env.sh && python bench/engine_bench.py $(BENCH_ARGS)

bench-node: setup
	@source ./env.sh && python bench/node_bench.py $(BENCH_ARGS)

bench-transport: setup
	@source ./env.sh && python bench/transport_bench.py

fuzz: setup
	@source ./env.sh && python scripts/fuzz_node.py --count 10000

soak: setup
	@source ./env.sh && python scripts/soak_node.py --duration 300

clean:
	rm -rf build install log
