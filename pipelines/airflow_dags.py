"""Build the shoprec Airflow DAGs: one task per DVC stage, a gate, and publish.

The DAG files in `dags/` call `build_dag`. A run starts with the setup task
`claim_workspace`, which claims the workspace and applies the trigger form's
params. Then comes one task per stage of dvc.yaml, named after the stage,
with `gate` right before `promote`, and `publish` (`dvc push`). The teardown
task `release_workspace` restores params.yaml and runs even when a stage failed.

Building a DAG reads dvc.yaml and the stage modules' docstrings and nothing
else: no database, no Ray, no data. The task callables import nothing heavy
either, because the stages run in `dvc repro` subprocesses.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, chain, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from pipelines import orchestration, run_workspace
from pipelines.errors import ShoprecError

log = logging.getLogger(__name__)

NIGHTLY_SCHEDULE = "0 2 * * *"
GATED_STAGE = "promote"
DEFAULT_REMOTE_CONN_ID = "shoprec_dvc_remote"
START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TaskPolicy:
    """Retries and time limit of one task; retry delays double up to max_retry_delay."""

    timeout: timedelta
    retries: int = 2
    retry_delay: timedelta = timedelta(minutes=1)
    max_retry_delay: timedelta = timedelta(minutes=30)


# Validation failures are data-quality verdicts, so validate never retries.
# Other stages retry: a lost Ray worker, a full disk or a slow file share can
# pass on a second try. A stage that rejects its input fails at once anyway.
POLICIES = {
    "claim_workspace": TaskPolicy(timedelta(minutes=5), retries=6),
    "ingest": TaskPolicy(timedelta(minutes=30)),
    "validate": TaskPolicy(timedelta(minutes=30), retries=0),
    "split": TaskPolicy(timedelta(minutes=30)),
    "train": TaskPolicy(timedelta(hours=4)),
    "evaluate": TaskPolicy(timedelta(hours=1)),
    "gate": TaskPolicy(timedelta(minutes=5), retries=0),
    "promote": TaskPolicy(timedelta(minutes=30)),
    "publish": TaskPolicy(timedelta(hours=1), retries=3),
    "release_workspace": TaskPolicy(timedelta(minutes=5)),
}
# Stages added to dvc.yaml later get this until they have an entry above.
DEFAULT_POLICY = TaskPolicy(timedelta(hours=2))

GATE_DOC = """Reads `gate.json` (written by evaluate) and `promote.force`.
When the gate failed and promotion is not forced, the stages after it and
`publish` are skipped, production stays as it is, and the run still succeeds;
the reason is in this task's log and in its XCom `reason`."""
PUBLISH_DOC = """Runs `dvc push` to the DVC remote named in SHOPREC_DVC_REMOTE, or the
default remote of `.dvc/config`. Credentials for an S3-compatible remote come
from the Airflow connection SHOPREC_DVC_REMOTE_CONN_ID (default
`shoprec_dvc_remote`: login = access key id, password = secret key, extra
`endpoint_url`, `region_name`) or else from the AWS_* environment variables."""
CLAIM_DOC = """Claims the workspace for this run (one run at a time across all shoprec
DAGs) and writes the trigger form's params into params.yaml for this run only.
Retries while another run has the workspace."""
RELEASE_DOC = """Restores params.yaml and releases the workspace. Runs even when a stage failed."""


def workspace_root(dag_file: str) -> Path:
    """Return the workspace: SHOPREC_WORKSPACE, or the repository that contains the dags/ folder."""
    configured = os.environ.get("SHOPREC_WORKSPACE")
    return Path(configured).resolve() if configured else Path(dag_file).resolve().parents[1]


def form_params() -> dict[str, Param]:
    """Build the trigger form of a manual run: one typed field per FORM_FIELDS entry, plus free overrides."""
    fields = [*run_workspace.FORM_FIELDS, run_workspace.OVERRIDES_FIELD]
    return {field.name: Param(field.default, title=field.title, description=field.description, **field.schema)
            for field in fields}


def policy_arguments(task_id: str) -> dict[str, Any]:
    policy = POLICIES.get(task_id, DEFAULT_POLICY)
    return {"task_id": task_id, "retries": policy.retries, "retry_delay": policy.retry_delay,
            "retry_exponential_backoff": 2.0, "max_retry_delay": policy.max_retry_delay,
            "execution_timeout": policy.timeout}


def build_dag(dag_id: str, dag_file: str, *, schedule: Any, doc_md: str,
              params: dict[str, Param] | None = None, tags: list[str] | None = None,
              paused_at_creation: bool | None = None) -> DAG:
    """Build a DAG that runs the workspace's dvc.yaml stage by stage.

    `paused_at_creation` None follows Airflow's dags_are_paused_at_creation setting.
    """
    root = workspace_root(dag_file)
    stages = orchestration.read_stages(root)
    with DAG(dag_id=dag_id, schedule=schedule, start_date=START_DATE, catchup=False, max_active_runs=1,
             doc_md=doc_md, params=params or {}, tags=tags or ["shoprec"],
             is_paused_upon_creation=paused_at_creation) as dag:
        claim = claim_workspace(str(root))
        release = release_workspace(str(root))
        steps = []
        for stage in stages:
            if stage.name == GATED_STAGE:
                steps.append(check_gate(str(root)))
            steps.append(stage_task(stage, root))
        if not any(stage.name == GATED_STAGE for stage in stages):
            steps.append(check_gate(str(root)))
        steps.append(publish_outputs(str(root)))
        chain(claim, *steps, release)
        release.as_teardown(setups=claim)
    return dag


def stage_doc(stage: orchestration.Stage) -> str:
    lines = [stage.doc or f"Runs `{stage.command}`.", "",
             f"Runs `dvc repro --single-item {stage.name}`; DVC skips it when nothing it depends on changed.",
             "", f"- command: `{stage.command}`",
             f"- depends on: {', '.join(f'`{dep}`' for dep in stage.deps) or 'nothing'}",
             f"- params: {', '.join(f'`{name}`' for name in stage.params) or 'none'}",
             f"- writes: {', '.join(f'`{out}`' for out in stage.outs) or 'nothing'}"]
    return "\n".join(lines)


def stage_task(stage: orchestration.Stage, root: Path):
    return task(doc_md=stage_doc(stage), **policy_arguments(stage.name))(run_stage)(str(root), stage.name)


# ---------------------------------------------------------------- task callables


def _run_environment(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    context = get_current_context()
    user = getattr(context["dag_run"], "triggering_user_name", None) or "the scheduler"
    triggered = {"SHOPREC_TRIGGERED_BY": f"{user} via Airflow DAG {context['dag'].dag_id}"}
    return orchestration.stage_environment(root, {**triggered, **(extra or {})})


def _owner() -> str:
    context = get_current_context()
    return f"{context['dag'].dag_id}/{context['run_id']}"


def _fail_without_retry(error: ShoprecError) -> AirflowFailException:
    """Wrap an input or configuration error so that Airflow fails the task without retries."""
    return AirflowFailException(str(error))


def run_stage(root: str, stage: str) -> dict[str, str]:
    """Reproduce one DVC stage in the workspace."""
    try:
        result = orchestration.run_stage(Path(root), stage, _run_environment(Path(root)))
    except orchestration.StageFailed as error:
        if error.input_error:
            raise _fail_without_retry(error) from error
        raise
    return {"stage": stage, "outcome": result.outcome}


@task(doc_md=CLAIM_DOC, **policy_arguments("claim_workspace"))
def claim_workspace(root: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        overrides = run_workspace.overrides_from_form(dict(params or {}))
        record = run_workspace.claim(Path(root), _owner(), overrides)
    except run_workspace.WorkspaceBusy:
        raise
    except ShoprecError as error:
        raise _fail_without_retry(error) from error
    if not overrides:
        log.info("no param overrides: this run uses params.yaml as it is")
    return record


@task(doc_md=RELEASE_DOC, **policy_arguments("release_workspace"))
def release_workspace(root: str) -> bool:
    return run_workspace.release(Path(root), _owner())


@task.short_circuit(doc_md=GATE_DOC, **policy_arguments("gate"))
def check_gate(root: str, ti=None) -> bool:
    try:
        decision = orchestration.gate_decision(Path(root))
    except ShoprecError as error:
        raise _fail_without_retry(error) from error
    ti.xcom_push(key="reason", value=decision.reason)
    if decision.promote:
        log.info("%s: promotion goes ahead", decision.reason)
    else:
        log.warning("%s; skipping the stages after the gate and publish", decision.reason)
    return decision.promote


@task(doc_md=PUBLISH_DOC, **policy_arguments("publish"))
def publish_outputs(root: str) -> dict[str, Any]:
    remote = os.environ.get("SHOPREC_DVC_REMOTE") or None
    env = _run_environment(Path(root), remote_credentials())
    try:
        return orchestration.publish(Path(root), remote, env)
    except orchestration.StageFailed:
        raise
    except ShoprecError as error:
        raise _fail_without_retry(error) from error


def remote_credentials() -> dict[str, str]:
    """AWS_* variables for `dvc push` from the remote's Airflow connection, if one is defined."""
    from airflow.sdk import Connection

    conn_id = os.environ.get("SHOPREC_DVC_REMOTE_CONN_ID", DEFAULT_REMOTE_CONN_ID)
    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        log.info("no Airflow connection '%s'; DVC reads remote credentials from the environment", conn_id)
        return {}
    extra = connection.extra_dejson
    values = {"AWS_ACCESS_KEY_ID": connection.login, "AWS_SECRET_ACCESS_KEY": connection.password,
              "AWS_ENDPOINT_URL_S3": extra.get("endpoint_url"), "AWS_DEFAULT_REGION": extra.get("region_name")}
    log.info("remote credentials from Airflow connection '%s' (%s)", conn_id,
             ", ".join(name for name, value in values.items() if value) or "no fields set")
    return {name: value for name, value in values.items() if value}
