#!/usr/bin/env bash
# Start Airflow standalone (API server and UI, scheduler, DAG processor, triggerer)
# for this repository and print the UI address and login once the UI responds.
# Stop it with Ctrl-C. Run it with `make airflow`, or directly after `make setup`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$AIRFLOW_HOME"
LOG="$AIRFLOW_HOME/standalone.log"
URL="$AIRFLOW__API__BASE_URL"
WAIT_SECONDS="${SHOPREC_AIRFLOW_WAIT:-300}"
STOP_SECONDS=60

if ! command -v airflow > /dev/null; then
    echo "error: airflow not found on PATH; run 'make setup' first" >&2
    exit 1
fi
if python -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" \
        "$SHOPREC_AIRFLOW_PORT" 2> /dev/null; then
    echo "error: port $SHOPREC_AIRFLOW_PORT on 127.0.0.1 is in use; set SHOPREC_AIRFLOW_PORT to a free port" >&2
    exit 1
fi

# Airflow gets a process group of its own (job control on), so that it does not
# ignore SIGINT as a background job would, and so that a stop can reach all of
# its components.
start_airflow() {
    set -m
    airflow standalone > "$LOG" 2>&1 &
    AIRFLOW_PID=$!
    set +m
}

stop_airflow() {
    kill -INT "$AIRFLOW_PID" 2> /dev/null || return 0
    echo "stopping Airflow (up to $STOP_SECONDS s)"
    local deadline=$((SECONDS + STOP_SECONDS))
    while kill -0 "$AIRFLOW_PID" 2> /dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 1
    done
    # Components that outlive the standalone process, or a standalone that hangs, are stopped by force.
    kill -TERM -- "-$AIRFLOW_PID" 2> /dev/null && sleep 5
    kill -KILL -- "-$AIRFLOW_PID" 2> /dev/null || true
}

print_login_when_ready() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "$URL/api/v2/monitor/health" 2> /dev/null; do
        if ! kill -0 "$AIRFLOW_PID" 2> /dev/null; then
            echo "error: Airflow standalone exited during start-up; the end of $LOG:" >&2
            tail -n 30 "$LOG" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: the Airflow UI did not respond at $URL within $WAIT_SECONDS s; see $LOG" >&2
            return 1
        fi
        sleep 2
    done
    local password
    password="$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['admin'])" \
        "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")"
    cat <<BANNER

Airflow UI:  $URL
login:       admin / $password
DAGs:        shoprec_nightly (paused until you unpause it), shoprec_retrain (trigger by hand)
workspace:   $SHOPREC_WORKSPACE
other shell: source infra/airflow/env.sh, then for example
             airflow dags trigger shoprec_retrain --conf '{"epochs": 2}'
Stop with Ctrl-C.
BANNER
}

echo "starting Airflow standalone in $AIRFLOW_HOME (log: $LOG)"
start_airflow
trap 'stop_airflow; exit 130' INT TERM
print_login_when_ready || { stop_airflow; exit 1; }
wait "$AIRFLOW_PID"
