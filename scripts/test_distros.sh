#!/usr/bin/env bash
# `make test` without ROS_DISTRO: set up and test each distro given, one after the other (the
# second runs even when the first fails), then say which result belongs to which distro and close
# with the totals.  Exits non-zero when any distro's setup or tests failed.
set -euo pipefail
cd "$(dirname "$0")/.."
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
declare -A result
total_passed=0 total_failed=0 total_skipped=0 failed=0
# The first distro runs every test; the later ones only the modules that touch ROS
# (clipseg_ros/test/ros_scope.py): the ROS-free ones run the same Python packages on every distro.
scope=all
for distro in "$@"; do
    echo "==> ROS 2 $distro: make test ROS_DISTRO=$distro TEST_SCOPE=$scope"
    start=$SECONDS
    if "${MAKE:-make}" --no-print-directory test ROS_DISTRO="$distro" TEST_SCOPE="$scope" \
            JUNIT_XML="$reports/$distro.xml"; then
        status=passed
    else
        status=FAILED failed=1
    fi
    # Counts from pytest's junit reports (passed failed skipped errors): the suite's and the
    # OpenVINO node tests' (Makefile); none if pytest never ran.
    if counts=$(python3 - "$reports/$distro.xml" "$reports/$distro-openvino.xml" 2>/dev/null <<'PY'
import os
import sys
import xml.etree.ElementTree as ET
totals = [0, 0, 0, 0]
for path in [sys.argv[1]] + [p for p in sys.argv[2:] if os.path.exists(p)]:
    suite = ET.parse(path).getroot()
    suite = suite.find('testsuite') if suite.tag == 'testsuites' else suite
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
    for i, value in enumerate((tests - failures - errors - skipped, failures, skipped, errors)):
        totals[i] += value
print(*totals)
PY
    ); then
        read -r passed failures skipped errors <<<"$counts"
        counts="$passed passed, $failures failed, $skipped skipped, $errors errors"
        total_passed=$((total_passed + passed)) total_skipped=$((total_skipped + skipped))
        total_failed=$((total_failed + failures + errors))
    else
        counts='no test report: set-up failed or pytest died'
    fi
    result[$distro]="$status ($scope tests): $counts, $((SECONDS - start)) s"
    scope=ros
    echo "==> ROS 2 $distro: ${result[$distro]}"
done
echo "==> results by distro"
for distro in "$@"; do
    echo "ROS 2 $distro: ${result[$distro]}"
done
echo "total: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit $failed
