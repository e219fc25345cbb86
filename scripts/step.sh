#!/usr/bin/env bash
# Run one set-up step, name it, and on failure say which step failed and show its log tail.
# Logs go to $STEP_LOG_DIR (the distro's colcon log base; default log).
set -uo pipefail
step_name=$1; shift
log_dir=${STEP_LOG_DIR:-log}
mkdir -p "$log_dir"
log_file="$log_dir/setup-$(echo "$step_name" | tr -c 'a-zA-Z0-9' '-' | sed 's/-*$//').log"
echo "==> $step_name"
if ! "$@" >"$log_file" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$log_file" | tail -n 40 >&2
    echo "error: set-up step '$step_name' failed (full log: $log_file)" >&2
    exit 1
fi
