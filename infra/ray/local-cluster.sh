#!/usr/bin/env bash
# Start, inspect or stop a two-node Ray cluster on this machine, bound to 127.0.0.1.
#
#   infra/ray/local-cluster.sh start    # a head node and a second node, separate processes
#   infra/ray/local-cluster.sh status
#   infra/ray/local-cluster.sh stop
#
# Then train on it:
#   RAY_ADDRESS=127.0.0.1:6389 dvc repro train
#
# Settings (environment variables):
#   RAY_HEAD_PORT   port of the head's GCS server (default 6389)
#   RAY_NODE_CPUS   CPUs each node offers to Ray (default 1)
#   RAY_CLUSTER_DIR Ray's temp folder for this cluster (default /tmp/shoprec-ray-<port>).
#                   Keep it short: Unix socket paths inside it must stay under 107 characters.
#   PYTHON          interpreter with Ray installed (default: .venv/bin/python, else python3)
# `stop` ends only this cluster's processes, so other Ray instances keep running.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
port="${RAY_HEAD_PORT:-6389}"
cpus="${RAY_NODE_CPUS:-1}"
cluster_dir="${RAY_CLUSTER_DIR:-/tmp/shoprec-ray-${port}}"
python="${PYTHON:-}"
if [ -z "${python}" ]; then
    if [ -x "${repo}/.venv/bin/python" ]; then python="${repo}/.venv/bin/python"; else python=python3; fi
fi
pid_file="${cluster_dir}.pid"
ready_file="${cluster_dir}.address"
log_file="${cluster_dir}.log"

start() {
    if [ -f "${pid_file}" ] && kill -0 "$(cat "${pid_file}")" 2>/dev/null; then
        echo "a cluster is already running (pid $(cat "${pid_file}")); use RAY_ADDRESS=$(cat "${ready_file}" 2>/dev/null)"
        return 0
    fi
    rm -f "${ready_file}"
    mkdir -p "${cluster_dir}"
    nohup "${python}" "${here}/local_cluster.py" --port "${port}" --cpus-per-node "${cpus}" \
        --temp-dir "${cluster_dir}" --ready-file "${ready_file}" >"${log_file}" 2>&1 &
    echo $! >"${pid_file}"
    for _ in $(seq 1 120); do
        if [ -s "${ready_file}" ]; then
            echo "Ray cluster with 2 nodes is up; use RAY_ADDRESS=$(cat "${ready_file}")"
            return 0
        fi
        if ! kill -0 "$(cat "${pid_file}")" 2>/dev/null; then
            echo "the Ray cluster failed to start; its log (${log_file}) follows:" >&2
            cat "${log_file}" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "the Ray cluster did not come up within 60 s; see ${log_file}" >&2
    stop
    exit 1
}

stop() {
    if [ -f "${pid_file}" ]; then
        kill -TERM "$(cat "${pid_file}")" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 "$(cat "${pid_file}")" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "${pid_file}"
    fi
    # Anything the keeper could not shut down: match this cluster's temp folder only.
    pkill -KILL -f -- "${cluster_dir}" 2>/dev/null || true
    rm -f "${ready_file}"
    echo "Ray cluster on port ${port} stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "${python}" -m ray.scripts.scripts status --address "127.0.0.1:${port}" ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
