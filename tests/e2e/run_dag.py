"""Run one DAG with Airflow's `dag.test()` and write its outcome as JSON.

The Airflow end-to-end tests start this script in a subprocess with a
throw-away AIRFLOW_HOME, so Airflow's configuration, logging set-up and
database stay out of the pytest process:

    python tests/e2e/run_dag.py DAG_FILE OUTPUT_JSON [--conf JSON] [--mark-success REGEX]

The JSON holds the run id, the run's state, each task's state and the
seconds that `dag.test()` took.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path


def load_dag(dag_file: Path):
    spec = importlib.util.spec_from_file_location(dag_file.stem, dag_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_file", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--conf", type=json.loads, default=None, help="run configuration (trigger form values)")
    parser.add_argument("--mark-success", default=None, help="regex of task ids to mark successful unrun")
    args = parser.parse_args()

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = load_dag(args.dag_file)
    started = time.perf_counter()
    run = dag.test(run_conf=args.conf, mark_success_pattern=args.mark_success)
    seconds = time.perf_counter() - started
    with create_session() as session:
        instances = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id))
        states = {instance.task_id: str(instance.state) for instance in instances}
    outcome = {"run_id": run.run_id, "state": str(run.state), "tasks": states, "seconds": round(seconds, 2)}
    args.output.write_text(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()
