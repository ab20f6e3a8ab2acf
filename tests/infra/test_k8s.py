"""Structure of the KubeRay manifest: it cannot be applied here, so its shape is checked."""

import yaml

from tests.conftest import REPO

MANIFEST = REPO / "infra" / "k8s" / "rayjob.yaml"


def documents():
    return {document["kind"]: document for document in yaml.safe_load_all(MANIFEST.read_text())}


def test_manifest_has_rayjob_and_params():
    kinds = documents()
    assert set(kinds) == {"ConfigMap", "RayJob"}
    assert kinds["RayJob"]["apiVersion"] == "ray.io/v1"


def test_rayjob_runs_train_stage():
    spec = documents()["RayJob"]["spec"]
    assert "python -m pipelines.train" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = cluster["workerGroupSpecs"][0]
    worker = workers["template"]["spec"]["containers"][0]
    for container in (head, worker):
        assert container["image"]
        assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
        assert {variable["name"] for variable in container["env"]} >= {"SHOPREC_WORKSPACE", "AWS_ACCESS_KEY_ID"}


def test_params_fit_the_worker_pods():
    kinds = documents()
    params = yaml.safe_load(kinds["ConfigMap"]["data"]["params.yaml"])["train"]
    workers = kinds["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    cpus_per_pod = int(workers["rayStartParams"]["num-cpus"])
    assert params["num_workers"] * params["cpus_per_worker"] <= workers["replicas"] * cpus_per_pod
    assert params["storage_path"].startswith("s3://")
    assert params["ray_address"] == "auto"


def test_params_cover_every_train_key():
    repository_keys = set(yaml.safe_load((REPO / "params.yaml").read_text())["train"])
    manifest_keys = set(yaml.safe_load(documents()["ConfigMap"]["data"]["params.yaml"])["train"])
    assert manifest_keys == repository_keys
