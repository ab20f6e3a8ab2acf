"""Structural checks of infra/docker-compose.yaml and infra/Dockerfile (Docker itself cannot run in the tests)."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
import yaml

from tests.conftest import REPO

COMPOSE_FILE = REPO / "infra" / "docker-compose.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
AIRFLOW_SERVICES = ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"]
# Settings that hold a secret or a URL or connection with one in it.
SECRET_NAME = re.compile(r"PASSWORD$|SECRET$|FERNET_KEY$|SQL_ALCHEMY_CONN$|^AIRFLOW_CONN_|^MC_HOST_")
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")
ENV_KEY = re.compile(r"^(\s+)([A-Z][A-Z0-9_]*):")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_services(compose):
    expected = {"postgres", "minio", "minio-init", "ray-head", "ray-worker", *AIRFLOW_SERVICES}
    assert set(compose["services"]) == expected


def test_dependencies_exist(compose):
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], (name, dependency)


def test_ports_on_loopback_only(compose):
    published = [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_images_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image, (name, image)
        assert not image.endswith(":latest"), (name, image)


def test_airflow_uses_postgres_and_local_executor(compose):
    for name in AIRFLOW_SERVICES:
        environment = compose["services"][name]["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name


def test_workspace_mounted_where_dags_are_read(compose):
    for name in [*AIRFLOW_SERVICES, "ray-head", "ray-worker"]:
        service = compose["services"][name]
        assert "..:/opt/shoprec" in service["volumes"], name
    environment = compose["services"]["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/shoprec/dags"
    assert environment["SHOPREC_WORKSPACE"] == "/opt/shoprec"


def test_training_and_publish_targets(compose):
    environment = compose["services"]["airflow-scheduler"]["environment"]
    assert environment["RAY_ADDRESS"] == "ray-head:6379"
    assert "ray start --address=ray-head:6379" in " ".join(compose["services"]["ray-worker"]["command"])
    assert environment["SHOPREC_DVC_REMOTE"] == "s3store"
    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert "dvc remote add --local --force s3store s3://shoprec/dvc" in init
    assert "mb --ignore-existing store/shoprec" in " ".join(compose["services"]["minio-init"]["entrypoint"])


def test_secrets_come_from_environment(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_VARIABLE.search(str(value)), (name, key, value)


def test_every_environment_setting_explained():
    """Each environment variable has a comment on the line above it (or above a run of them)."""
    lines = COMPOSE_FILE.read_text().splitlines()
    unexplained = []
    for number, line in enumerate(lines):
        match = ENV_KEY.match(line)
        if not match:
            continue
        above = lines[number - 1].strip()
        if not above.startswith("#"):
            unexplained.append(f"line {number + 1}: {match.group(2)}")
    assert unexplained == []


def test_every_service_explained():
    lines = COMPOSE_FILE.read_text().splitlines()
    services = [number for number, line in enumerate(lines) if re.match(r"^  [a-z][a-z0-9-]*:$", line)]
    assert services
    unexplained = [lines[number].strip() for number in services if not lines[number - 1].strip().startswith("#")]
    assert unexplained == []


def test_dockerfile_matches_installed_airflow():
    text = DOCKERFILE.read_text()
    airflow = version("apache-airflow")
    assert f"FROM apache/airflow:{airflow}-python3.11" in text
    assert f'"apache-airflow=={airflow}"' in text
