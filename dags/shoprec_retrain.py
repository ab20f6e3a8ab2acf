"""Manual shoprec retraining with params from the trigger form.

Started by hand only. The form's fields (dataset, epochs, Ray workers, forced
promotion, and any other params.yaml keys under "Other params") override
`params.yaml` for this run only. `claim_workspace` writes them into the
workspace's params.yaml, and `release_workspace` restores the file when the
run ends, whatever its outcome. The values a run used are in its run
configuration, the XCom of `claim_workspace`, `dvc.lock` and the model card
of a promoted model. Fields left at their defaults keep the params.yaml value.

Trigger from the command line:

    airflow dags trigger shoprec_retrain --conf '{"epochs": 2, "num_workers": 1}'
"""

from __future__ import annotations

from pipelines.airflow_dags import build_dag, form_params

dag = build_dag(
    "shoprec_retrain",
    __file__,
    schedule=None,
    doc_md=__doc__,
    params=form_params(),
    tags=["shoprec", "manual"],
    # Nothing runs until someone triggers it, so it can start unpaused.
    paused_at_creation=False,
)
