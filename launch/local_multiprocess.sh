#!/usr/bin/env bash
# Runs N xray_gen processes on this machine, joined by jax.distributed: a multi-host run in
# miniature (the command tests/test_multiprocess.py runs). Every argument goes to xray_gen.main.
#
#   NUM_PROCESSES=2 launch/local_multiprocess.sh --config=configs/classifier.py:smoke --workdir=/tmp/mp
#
# Environment (all optional):
#   NUM_PROCESSES        processes to start (default 2)
#   COORDINATOR_PORT     localhost port of process 0's coordinator (default: a free one)
#   DEVICES_PER_PROCESS  CPU devices each process sees (default 1; ignored with PLATFORM=gpu)
#   PLATFORM             cpu (default) or gpu: one process per GPU, process i sees GPU i
#   LOG_DIR              where process_<i>.log go (default: the current directory); process 0
#                        also prints to this terminal
#   PYTHON               interpreter (default: python)
# The run stops when all processes end; if one fails, the others are stopped and its exit status
# is returned. The global batch (train.batch_size) is split evenly over the processes.
set -euo pipefail

num_processes="${NUM_PROCESSES:-2}"
python="${PYTHON:-python}"
platform="${PLATFORM:-cpu}"
log_dir="${LOG_DIR:-.}"
port="${COORDINATOR_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
mkdir -p "$log_dir"

pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  env_vars=(JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID="$i")
  if [[ "$platform" == gpu ]]; then
    env_vars+=(CUDA_VISIBLE_DEVICES="$i")
  else
    env_vars+=(JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}")
  fi
  if ((i == 0)); then
    env "${env_vars[@]}" "$python" -m xray_gen.main "$@" > >(tee "$log_dir/process_0.log") 2>&1 &
  else
    env "${env_vars[@]}" "$python" -m xray_gen.main "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for ((i = 0; i < num_processes; i++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "a process exited with status $rc: stopping the others (logs in $log_dir/process_<i>.log)" >&2
    stop_all
  fi
done
exit "$status"
