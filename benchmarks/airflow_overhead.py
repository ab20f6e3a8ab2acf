"""Time a whole pipeline run under Airflow against a plain `dvc repro` of the same pipeline.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/airflow_overhead.py [--output benchmarks/results/airflow_overhead.json]

Two clean copies of the repository start from the same state (no DVC cache, no
outputs) with the same params.yaml. In copy A, `dvc repro` runs the pipeline
from scratch and then once more with nothing changed. Then copy B starts
Airflow standalone (infra/airflow/standalone.sh: scheduler with the
LocalExecutor, SQLite) and the shoprec_retrain DAG is triggered through the
REST API with an empty form, which keeps params.yaml as it is: once from
scratch and once with nothing changed. An Airflow run's time goes from the
trigger (the run's queued_at) to its end_date, so it includes the scheduler's
delay in starting the run and its tasks. Airflow's own start-up is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_run import machine, timed_repro  # noqa: E402
from tests.e2e.test_pipeline import copy_repository  # noqa: E402

DAG_ID = "shoprec_retrain"


class AirflowApi:
    """The REST API of a running Airflow, with a token for its admin user."""

    def __init__(self, base: str, password: str):
        self.base = base
        self.token = self.request("POST", "/auth/token", {"username": "admin", "password": password},
                                  auth=False)["access_token"]

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def run_dag(self, dag_id: str, conf: dict, timeout: float = 3600) -> dict:
        """Trigger a run, wait for it to end, and return its timing and its tasks' durations."""
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
        deadline = time.monotonic() + timeout
        while run["state"] not in ("success", "failed"):
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run['dag_run_id']} did not end within {timeout} s")
            time.sleep(1)
            run = self.request("GET", path)
        tasks = self.request("GET", f"{path}/taskInstances")["task_instances"]
        return {
            "state": run["state"],
            "seconds": round(_seconds(run["queued_at"], run["end_date"]), 1),
            "queued_to_start_seconds": round(_seconds(run["queued_at"], run["start_date"]), 1),
            "task_seconds": {task["task_id"]: round(task["duration"] or 0.0, 1) for task in tasks},
        }


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_airflow(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, AirflowApi]:
    port = free_port()
    env = {**env, "SHOPREC_AIRFLOW_PORT": str(port)}
    script = subprocess.Popen([str(root / "infra" / "airflow" / "standalone.sh")], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in script.stdout:
        print(line, end="", flush=True)
        if line.startswith("login:"):
            password = line.split("/", 1)[1].strip()
            return script, AirflowApi(f"http://127.0.0.1:{port}", password)
    raise SystemExit(f"Airflow did not start; see {root / '.airflow' / 'standalone.log'}")


def stop_airflow(script: subprocess.Popen) -> None:
    script.send_signal(signal.SIGINT)
    try:
        script.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGKILL)
        script.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "airflow_overhead.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="shoprec-airflow-bench-"))
    plain, orchestrated = copy_repository(scratch / "plain"), copy_repository(scratch / "airflow")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "SHOPREC_"))}
    env.pop("RAY_ADDRESS", None)
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"})
    try:
        plain_env = {**env, "SHOPREC_WORKSPACE": str(plain)}
        plain_clean = timed_repro(plain, plain_env)
        plain_unchanged = timed_repro(plain, plain_env)

        script, api = start_airflow(orchestrated, env)
        try:
            airflow_clean = api.run_dag(DAG_ID, {})
            airflow_unchanged = api.run_dag(DAG_ID, {})
        finally:
            stop_airflow(script)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "machine": machine(),
        "plain_dvc_repro": {"clean": plain_clean, "unchanged": plain_unchanged},
        "airflow_run": {"clean": airflow_clean, "unchanged": airflow_unchanged},
        "ratio_clean": round(airflow_clean["seconds"] / plain_clean["seconds"], 2),
        "overhead_clean_seconds": round(airflow_clean["seconds"] - plain_clean["seconds"], 1),
        "overhead_unchanged_seconds": round(airflow_unchanged["seconds"] - plain_unchanged["seconds"], 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
