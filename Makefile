# One place that knows how to set up, build, test, demo and benchmark clipseg_ros.
# Every target works from a fresh clone; `make setup` is idempotent (stamp files record what is done).
#
# ROS 2 comes from PyPI wheels, one prefix per distro, side by side:
#   kilted (default)  .venv/        build/        install/        log/
#   jazzy             .venv-jazzy/  build-jazzy/  install-jazzy/  log-jazzy/
# Pick one with `make TARGET ROS_DISTRO=jazzy`.  Plain `make test` tests every distro in turn.

SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c
PYTHON_BOOTSTRAP ?= python3
ROS_DISTROS := kilted jazzy
# Only make's command line picks the distro: the ROS_DISTRO that a sourced /opt/ros setup (or
# env.sh) exports says nothing about which wheel-built prefix a target should use.
DISTRO_GIVEN := $(filter command line,$(origin ROS_DISTRO))
ifeq ($(DISTRO_GIVEN),)
ROS_DISTRO := kilted
endif
ifeq ($(filter $(ROS_DISTRO),$(ROS_DISTROS)),)
$(error ROS_DISTRO=$(ROS_DISTRO) is not one of: $(ROS_DISTROS))
endif
# Kilted keeps the unsuffixed paths that existing checkouts (and their .venv links) already use.
SUFFIX := $(if $(filter kilted,$(ROS_DISTRO)),,-$(ROS_DISTRO))
VENV := .venv$(SUFFIX)
BUILD_BASE := build$(SUFFIX)
INSTALL_BASE := install$(SUFFIX)
LOG_BASE := log$(SUFFIX)
export STEP_LOG_DIR := $(LOG_BASE)
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.clipseg-deps-installed
BUILD_STAMP := $(INSTALL_BASE)/.clipseg-built
BENCH_DEPS_STAMP := $(VENV)/.clipseg-bench-deps-installed
REQUIREMENTS := scripts/requirements-ros-$(ROS_DISTRO).txt scripts/requirements-py.txt
PACKAGE_SOURCES := $(shell find clipseg_ros clipseg_ros_interfaces -type f \
	-not -path 'clipseg_ros/test/*' -not -path '*/__pycache__/*' -not -path '*/.pytest_cache/*' -not -name '*.pyc' | sort)
PYTEST_ARGS ?=
# Where pytest writes its junit report (scripts/test_distros.sh reads the counts from it).
JUNIT_XML ?= $(LOG_BASE)/pytest-junit.xml
# e.g. make bench BENCH_ARGS='--device cuda --dtype float16 --compile-mode cuda_graphs'
BENCH_ARGS ?=
ENV := source ./env.sh $(ROS_DISTRO)

ENGINE_TESTS := $(addprefix clipseg_ros/test/,test_engine.py test_engine_inputs.py test_model_loading.py \
	test_frame_maps.py test_visual_prompt.py)

.PHONY: setup test test-transformers-floor demo demo-teach bench bench-backends bench-node bench-depth bench-depth-wait bench-cameras bench-transport bench-qos bench-tracking fuzz soak clean

setup: $(BUILD_STAMP) $(BENCH_DEPS_STAMP)

$(PY):
	@scripts/step.sh "create $(ROS_DISTRO) virtualenv" $(PYTHON_BOOTSTRAP) -m venv $(VENV)

$(DEPS_STAMP): $(REQUIREMENTS) scripts/fix_ros_cmake_paths.py | $(PY)
	@scripts/step.sh "install Python and ROS 2 $(ROS_DISTRO) wheels" \
		$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	@scripts/step.sh 're-point ROS wheel CMake include paths' $(PY) scripts/fix_ros_cmake_paths.py
	@touch $@

# TrackEval and the reference trackers without their declared dependencies: both ask for
# opencv-python, which would replace the headless cv2 (scripts/requirements-bench.txt).
$(BENCH_DEPS_STAMP): scripts/requirements-bench.txt | $(DEPS_STAMP)
	@scripts/step.sh "install the tracking benchmark's packages" \
		$(PY) -m pip install --quiet --no-deps -r scripts/requirements-bench.txt
	@touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(PACKAGE_SOURCES)
	@scripts/step.sh "colcon build for $(ROS_DISTRO)" \
		scripts/colcon_build.sh $(VENV) $(BUILD_BASE) $(INSTALL_BASE) $(LOG_BASE)
	@touch $@

# The node tests that drive the engine hardest, again on the OpenVINO back end (the whole suite
# runs the node on torch; test_backends.py covers both back ends at the engine level).
OPENVINO_NODE_TESTS := $(addprefix clipseg_ros/test/,test_node.py test_node_cameras.py \
	test_node_depth.py test_semantic.py)

# all: every test. ros: only the test modules that touch ROS (clipseg_ros/test/ros_scope.py),
# what `make test` runs on the distros after the first: the rest runs the same Python packages.
TEST_SCOPE ?= all

ifneq ($(DISTRO_GIVEN),)
test: setup
	@$(ENV) && CLIPSEG_TEST_SCOPE=$(TEST_SCOPE) python -m pytest clipseg_ros/test \
		--junitxml=$(JUNIT_XML) $(PYTEST_ARGS)
ifeq ($(TEST_SCOPE),all)
	@$(ENV) && echo '==> node tests on the openvino back end' && CLIPSEG_TEST_BACKEND=openvino \
		python -m pytest $(OPENVINO_NODE_TESTS) --junitxml=$(JUNIT_XML:.xml=-openvino.xml) \
		$(PYTEST_ARGS)
endif
else
test:
	@scripts/test_distros.sh $(ROS_DISTROS)
	@$(MAKE) --no-print-directory test-transformers-floor
endif

# The engine tests (no ROS) against the oldest transformers the package claims, installed beside
# the Kilted venv's pinned release and put first on the path.
FLOOR_DIR := $(VENV)/transformers-floor
FLOOR_STAMP := $(FLOOR_DIR)/.installed
$(FLOOR_STAMP): scripts/requirements-transformers-floor.txt | $(DEPS_STAMP)
	@rm -rf $(FLOOR_DIR)
	@scripts/step.sh 'install the transformers floor' $(PY) -m pip install --quiet --no-deps \
		--target $(FLOOR_DIR) -r scripts/requirements-transformers-floor.txt
	@touch $@

test-transformers-floor: setup $(FLOOR_STAMP)
	@$(ENV) && echo "==> engine tests with transformers $$(PYTHONPATH=$(FLOOR_DIR) python -c \
		'import transformers; print(transformers.__version__)')" && \
		PYTHONPATH=$(FLOOR_DIR):$$PYTHONPATH python -m pytest $(ENGINE_TESTS) $(PYTEST_ARGS)

demo: setup
	@$(ENV) && python scripts/demo.py

demo-teach: setup
	@$(ENV) && python scripts/teach_demo.py

bench: setup
	@$(ENV) && python bench/engine_bench.py $(BENCH_ARGS)

# Frames/s per CPU back end and precision, side by side; then configure time cold and warm.
bench-backends: setup
	@$(ENV) && python bench/backends_bench.py --isa-caps AVX2,AVX2_VNNI,AVX512_CORE_VNNI,native --prompts 1,13 --cameras 1 $(BENCH_ARGS) && python bench/backend_startup.py

bench-node: setup
	@$(ENV) && python bench/node_bench.py $(BENCH_ARGS)

bench-depth: setup
	@$(ENV) && python bench/depth_bench.py $(BENCH_ARGS)

bench-depth-wait: setup
	@$(ENV) && python bench/depth_wait_bench.py $(BENCH_ARGS)

bench-cameras: setup
	@$(ENV) && python bench/cameras_bench.py $(BENCH_ARGS)

# The node without inference against an echo: mask, confidence and segmentation; then every
# output subscribed, with and without depth, on seeded clean and ragged masks and a table
# scene's (frame_cost_bench.py), each beside the least any node adds to the echo.
bench-transport: setup
	@$(ENV) && python bench/transport_bench.py && python bench/frame_cost_bench.py --both-depths

bench-tracking: setup
	@$(ENV) && python bench/tracking_bench.py $(BENCH_ARGS)

bench-qos: setup
	@$(ENV) && python bench/qos_bench.py $(BENCH_ARGS)

fuzz: setup
	@$(ENV) && python scripts/fuzz_node.py --count 10000

soak: setup
	@$(ENV) && python scripts/soak_node.py --duration 300

# Build outputs only (the venvs stay): of the distro named, or of every distro.
clean:
	rm -rf $(if $(DISTRO_GIVEN),$(BUILD_BASE) $(INSTALL_BASE) $(LOG_BASE),build install log \
		$(foreach d,$(filter-out kilted,$(ROS_DISTROS)),build-$(d) install-$(d) log-$(d)))
