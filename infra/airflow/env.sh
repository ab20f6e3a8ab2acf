# Settings of the local Airflow for this repository; source it before any `airflow` command:
#
#     source infra/airflow/env.sh
#     airflow dags trigger shoprec_retrain --conf '{"epochs": 2}'
#
# Everything lives under .airflow/ in the repository (git-ignored): airflow.cfg,
# the SQLite metadata database, task logs and the generated admin password.
# Set SHOPREC_AIRFLOW_DB to a SQLAlchemy URL to use PostgreSQL instead, and
# SHOPREC_AIRFLOW_PORT to serve the UI on another port than 8080.

SHOPREC_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export SHOPREC_WORKSPACE="$SHOPREC_REPO"
export AIRFLOW_HOME="$SHOPREC_REPO/.airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$SHOPREC_REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${SHOPREC_AIRFLOW_DB:-sqlite:///$AIRFLOW_HOME/airflow.db}"
# The UI and API listen on loopback only.
SHOPREC_AIRFLOW_PORT="${SHOPREC_AIRFLOW_PORT:-8080}"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$SHOPREC_AIRFLOW_PORT"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$SHOPREC_AIRFLOW_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$SHOPREC_AIRFLOW_PORT/execution/"
# A run is one task at a time, so a few executor processes are enough.
export AIRFLOW__CORE__PARALLELISM=4
# One admin user; Airflow generates its password into this file on first start.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
# The stages are `python -m pipelines.<stage>` and the DAG files import pipelines,
# so this checkout's code comes first on the path, and its virtual environment first on PATH.
export PYTHONPATH="$SHOPREC_REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$SHOPREC_REPO/.venv/bin" ]; then
    export PATH="$SHOPREC_REPO/.venv/bin:$PATH"
fi
export DVC_NO_ANALYTICS=1
