"""Import one DAG file as Airflow's DAG processor would, and print what the import did as JSON.

    python tests/dags/inspect_dag.py DAG_FILE

The tests start this in a subprocess with a throw-away AIRFLOW_HOME, so each
DAG file is imported into a fresh interpreter. Airflow is imported first and
timed apart, as the DAG processor has it loaded already. While the DAG file
imports, an audit hook records every file opened, process started and socket
connected, and an SQLAlchemy listener counts database statements. The JSON
also names the heavy libraries the import loaded and describes each DAG the
file defines: schedule, params and every task's dependencies and retries.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HEAVY_MODULES = ("ray", "torch", "lightning", "pandas", "pyarrow", "great_expectations", "dvc", "sklearn")
RECORDING = {"on": False}
EVENTS: dict[str, list] = {"open": [], "subprocess": [], "socket": [], "sqlite": [], "queries": []}


def audit(event: str, args: tuple) -> None:
    if not RECORDING["on"]:
        return
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        EVENTS["open"].append(str(args[0]))
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn"):
        EVENTS["subprocess"].append(repr(args)[:200])
    elif event == "socket.connect":
        EVENTS["socket"].append(repr(args[1])[:200])
    elif event == "sqlite3.connect":
        EVENTS["sqlite"].append(repr(args)[:200])


def count_queries() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "before_cursor_execute")
    def record(connection, cursor, statement, parameters, context, executemany):
        if RECORDING["on"]:
            EVENTS["queries"].append(statement[:200])


def describe_task(task) -> dict:
    timeout = task.execution_timeout
    return {
        "task_id": task.task_id,
        "operator": type(task).__name__,
        "upstream": sorted(task.upstream_task_ids),
        "retries": task.retries,
        "retry_exponential_backoff": task.retry_exponential_backoff,
        "max_retry_delay": task.max_retry_delay.total_seconds() if task.max_retry_delay else None,
        "execution_timeout": timeout.total_seconds() if timeout else None,
        "doc_md": task.doc_md or "",
        "is_setup": task.is_setup,
        "is_teardown": task.is_teardown,
    }


def describe_dag(dag) -> dict:
    timetable = dag.timetable
    params = {name: {"default": param.value, "description": param.description, **param.schema}
              for name, param in ((name, dag.params.get_param(name)) for name in dag.params)}
    return {
        "dag_id": dag.dag_id,
        "doc_md": dag.doc_md or "",
        "timetable": type(timetable).__name__,
        "cron": getattr(timetable, "expression", None),
        "timezone": str(getattr(timetable, "timezone", "")),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "params": params,
        "tasks": [describe_task(task) for task in dag.topological_sort()],
    }


def main() -> None:
    dag_file = Path(sys.argv[1]).resolve()
    sys.addaudithook(audit)

    started = time.perf_counter()
    # croniter runs `file` on the interpreter when first imported; the DAG processor has it loaded already.
    import croniter  # noqa: F401
    from airflow.sdk import DAG

    count_queries()
    airflow_seconds = time.perf_counter() - started
    before = set(sys.modules)

    spec = importlib.util.spec_from_file_location(dag_file.stem, dag_file)
    module = importlib.util.module_from_spec(spec)
    RECORDING["on"] = True
    started = time.perf_counter()
    spec.loader.exec_module(module)
    dag_seconds = time.perf_counter() - started
    RECORDING["on"] = False

    loaded = {name.split(".")[0] for name in set(sys.modules) - before}
    dags = [value for value in vars(module).values() if isinstance(value, DAG)]
    print(json.dumps({
        "airflow_import_seconds": airflow_seconds,
        "dag_import_seconds": dag_seconds,
        "events": EVENTS,
        "heavy_modules": sorted(loaded & set(HEAVY_MODULES)),
        "dags": [describe_dag(dag) for dag in dags],
    }))


if __name__ == "__main__":
    main()
