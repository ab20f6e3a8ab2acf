"""Every file in dags/: it imports cleanly and quickly, touches nothing, and builds the expected DAG.

Each DAG file is imported by tests/dags/inspect_dag.py in its own interpreter
with a throw-away AIRFLOW_HOME, so Airflow's configuration never reaches the
pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DAG_FILES = sorted((REPO / "dags").glob("*.py"))
INSPECT = Path(__file__).with_name("inspect_dag.py")
# Airflow 3.3's DAG processor re-parses every file every 30 s (min_file_process_interval)
# and gives up on a file after 30 s (dagbag_import_timeout). Each DAG file here takes about 0.2 s.
IMPORT_LIMIT_SECONDS = 5.0
STAGE_TASKS = ["ingest", "validate", "split", "augment", "train", "compress", "evaluate", "coldstart", "gate", "promote",
               "publish"]
# Files a DAG file may read at parse time inside the repository: code and the pipeline definition.
ALLOWED_SUFFIXES = (".py", ".pyc")
ALLOWED_FILES = {"dvc.yaml"}


def inspect(dag_file: Path, home: Path, **extra_env: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "SHOPREC_"))}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent), "PYTHONPATH": str(REPO), **extra_env})
    result = subprocess.run([sys.executable, str(INSPECT), str(dag_file)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"importing {dag_file.name} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def inspections(tmp_path_factory) -> dict[str, dict]:
    home = tmp_path_factory.mktemp("airflow_home")
    return {path.stem: inspect(path, home) for path in DAG_FILES}


def dag_of(inspections: dict, stem: str) -> dict:
    return inspections[stem]["dags"][0]


def task_map(dag: dict) -> dict[str, dict]:
    return {task["task_id"]: task for task in dag["tasks"]}


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
class TestImport:
    def test_defines_one_dag_named_after_file(self, inspections, dag_file):
        dags = inspections[dag_file.stem]["dags"]
        assert [dag["dag_id"] for dag in dags] == [dag_file.stem]

    def test_imports_within_limit(self, inspections, dag_file):
        assert inspections[dag_file.stem]["dag_import_seconds"] < IMPORT_LIMIT_SECONDS

    def test_no_database_query(self, inspections, dag_file):
        events = inspections[dag_file.stem]["events"]
        assert events["queries"] == []
        assert events["sqlite"] == []

    def test_no_process_or_connection(self, inspections, dag_file):
        events = inspections[dag_file.stem]["events"]
        assert events["subprocess"] == []
        assert events["socket"] == []

    def test_no_ray_or_data_library(self, inspections, dag_file):
        assert inspections[dag_file.stem]["heavy_modules"] == []

    def test_reads_no_data(self, inspections, dag_file):
        opened = [Path(path) for path in inspections[dag_file.stem]["events"]["open"]]
        inside = [path for path in opened if path.is_relative_to(REPO)]
        data = [path for path in inside
                if not path.name.endswith(ALLOWED_SUFFIXES) and path.name not in ALLOWED_FILES]
        assert data == []
        assert REPO / "dvc.yaml" in inside

    def test_dag_and_tasks_documented(self, inspections, dag_file):
        dag = dag_of(inspections, dag_file.stem)
        assert dag["doc_md"].strip()
        undocumented = [task["task_id"] for task in dag["tasks"] if not task["doc_md"].strip()]
        assert undocumented == []

    def test_tasks_in_pipeline_order(self, inspections, dag_file):
        tasks = dag_of(inspections, dag_file.stem)["tasks"]
        chain = ["claim_workspace", *STAGE_TASKS]
        assert [task["task_id"] for task in tasks] == [*chain, "release_workspace"]
        for previous, task in zip(chain, tasks[1:len(chain)]):
            assert task["upstream"] == [previous], task["task_id"]
        assert tasks[-1]["upstream"] == ["claim_workspace", "publish"]

    def test_workspace_claimed_and_released(self, inspections, dag_file):
        tasks = task_map(dag_of(inspections, dag_file.stem))
        assert tasks["claim_workspace"]["is_setup"] is True
        assert tasks["release_workspace"]["is_teardown"] is True

    def test_retries_and_timeouts(self, inspections, dag_file):
        tasks = task_map(dag_of(inspections, dag_file.stem))
        assert tasks["validate"]["retries"] == 0
        assert tasks["gate"]["retries"] == 0
        for task_id in ("ingest", "split", "train", "evaluate", "promote", "publish"):
            assert tasks[task_id]["retries"] >= 2, task_id
            assert tasks[task_id]["retry_exponential_backoff"] == 2.0, task_id
            assert tasks[task_id]["max_retry_delay"] == 1800.0, task_id
        missing = [task_id for task_id, task in tasks.items() if not task["execution_timeout"]]
        assert missing == []
        assert tasks["train"]["execution_timeout"] == 4 * 3600

    def test_one_run_at_a_time(self, inspections, dag_file):
        dag = dag_of(inspections, dag_file.stem)
        assert dag["catchup"] is False
        assert dag["max_active_runs"] == 1

    def test_gate_short_circuits(self, inspections, dag_file):
        assert task_map(dag_of(inspections, dag_file.stem))["gate"]["operator"] == "_ShortCircuitDecoratedOperator"


def test_nightly_schedule(inspections):
    dag = dag_of(inspections, "shoprec_nightly")
    assert (dag["timetable"], dag["cron"], dag["timezone"]) == ("CronTriggerTimetable", "0 2 * * *", "UTC")
    assert dag["params"] == {}


def test_retrain_started_by_hand(inspections):
    assert dag_of(inspections, "shoprec_retrain")["timetable"] == "NullTimetable"


def test_retrain_form(inspections):
    params = dag_of(inspections, "shoprec_retrain")["params"]
    assert list(params) == ["dataset", "epochs", "num_workers", "force_promote", "overrides"]
    for name, param in params.items():
        assert param["title"], name
        assert param["description"], name
    assert params["epochs"]["type"] == ["null", "integer"]
    assert params["epochs"]["minimum"] == 1
    assert params["dataset"]["enum"] == [None, "movielens-100k", "files"]
    assert (params["force_promote"]["type"], params["force_promote"]["default"]) == ("boolean", False)
    assert (params["overrides"]["type"], params["overrides"]["default"]) == ("object", {})


def test_new_stages_and_schedule_need_no_dag_change(tmp_path):
    """A workspace whose dvc.yaml has augment and compress gets their tasks; the schedule comes from the environment."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("augment", "compress", "coldstart"):
        stages.pop(name, None)  # re-added below, as a workspace that adds them would
    stages["augment"] = {"cmd": "python -m pipelines.augment", "deps": ["data/split/train.parquet"],
                         "outs": ["data/augmented"]}
    stages["train"]["deps"].append("data/augmented")
    stages["compress"] = {"cmd": "python -m pipelines.compress", "deps": ["models/candidate"],
                          "outs": ["models/compressed"]}
    stages["evaluate"]["deps"].append("models/compressed")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))

    result = inspect(REPO / "dags" / "shoprec_nightly.py", tmp_path / "home",
                     SHOPREC_WORKSPACE=str(tmp_path), SHOPREC_NIGHTLY_SCHEDULE="30 3 * * 1-5")
    dag = result["dags"][0]
    task_ids = [task["task_id"] for task in dag["tasks"]]
    assert task_ids == ["claim_workspace", "ingest", "validate", "split", "augment", "train", "compress",
                        "evaluate", "gate", "promote", "publish", "release_workspace"]
    assert task_map(dag)["augment"]["retries"] == 2
    assert dag["cron"] == "30 3 * * 1-5"
