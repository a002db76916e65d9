#!/usr/bin/env bash
# Trains xray_gen on every worker of a Cloud TPU VM slice (a v4-32, v5e-64, ... pod slice, or a
# single-host v4-8): `install` sets up xray_gen on all workers, `train` (or any --mode) runs the
# same xray_gen.main command on all of them at once. JAX on a TPU VM finds the coordinator and
# the process ids itself, so no --coordinator_address/--process_id are needed.
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b
#   launch/tpu_vm.sh install
#   launch/tpu_vm.sh run --config=configs/classifier.py --workdir=/mnt/shared/runs/classifier
#
# The workdir must be one directory every worker sees at the same path (a Filestore/NFS mount or
# a gcsfuse-mounted bucket): all hosts write each orbax checkpoint together and resume from it.
# Environment (optional): PROJECT (gcloud project), REPO_URL (default: this checkout's `origin`),
# REF (commit to install; default: this checkout's HEAD), REMOTE_DIR (default: xray_gen),
# VENV (default: ~/xray_gen_venv on each worker).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to your TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_url="${REPO_URL:-$(git -C "$here" remote get-url origin)}"
ref="${REF:-$(git -C "$here" rev-parse HEAD)}"
remote_dir="${REMOTE_DIR:-xray_gen}"
venv="${VENV:-\$HOME/xray_gen_venv}"
project_args=()
[[ -n "${PROJECT:-}" ]] && project_args=(--project "$PROJECT")

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_args[@]}" --worker=all --command "$1"
}

case "${1:-}" in
  install)
    on_all_workers "set -e
      [ -d $remote_dir/.git ] || git clone $(printf %q "$repo_url") $remote_dir
      cd $remote_dir && git fetch --quiet origin && git checkout --quiet $(printf %q "$ref")
      python3 -m venv $venv && $venv/bin/pip install --quiet --upgrade pip
      $venv/bin/pip install --quiet -e '.[tpu]'"
    ;;
  run)
    shift
    on_all_workers "cd $remote_dir && $venv/bin/python -m xray_gen.main $(printf '%q ' "$@")"
    ;;
  *)
    echo "usage: launch/tpu_vm.sh install | run --config=... --workdir=... [xray_gen.main flags]" >&2
    exit 2
    ;;
esac
