"""Nightly shoprec run: retrain on the current data, promote if the gate passes, publish.

Runs every DVC stage of the workspace's `dvc.yaml` in order with the values
in `params.yaml`, one task per stage. DVC skips a stage whose code, data and
params did not change, so a night without new data does almost nothing. A
failed data validation fails the run; a failed gate skips `promote` and
`publish` and leaves production as it is.

The schedule is the cron expression in SHOPREC_NIGHTLY_SCHEDULE, in UTC
(default `0 2 * * *`, 02:00 UTC). Runs never catch up on missed nights, and
only one runs at a time.
"""

from __future__ import annotations

import os

from airflow.sdk import CronTriggerTimetable

from pipelines.airflow_dags import NIGHTLY_SCHEDULE, build_dag

dag = build_dag(
    "shoprec_nightly",
    __file__,
    schedule=CronTriggerTimetable(os.environ.get("SHOPREC_NIGHTLY_SCHEDULE", NIGHTLY_SCHEDULE), timezone="UTC"),
    doc_md=__doc__,
    tags=["shoprec", "nightly"],
)
