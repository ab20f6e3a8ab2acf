import os
import socket
import subprocess
import sys

import pytest

from pipelines import cluster
from pipelines.errors import ConfigError


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_address_named():
    port = closed_port()
    with pytest.raises(ConfigError, match=rf"RAY_ADDRESS is '127\.0\.0\.1:{port}', but no Ray cluster is listening there"):
        cluster.check_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS")


def test_malformed_address_named():
    with pytest.raises(ConfigError, match=r"train\.ray_address is 'nowhere', expected HOST:PORT"):
        cluster.check_reachable("nowhere", "train.ray_address")


def test_address_setting_prefers_param(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert cluster.ray_address({"ray_address": "127.0.0.1:2"}) == "127.0.0.1:2"
    assert cluster.address_setting({"ray_address": "127.0.0.1:2"}) == "train.ray_address"
    assert cluster.ray_address({"ray_address": ""}) == "127.0.0.1:1"
    assert cluster.address_setting({"ray_address": ""}) == "RAY_ADDRESS"


def test_loopback_detection():
    assert cluster.is_loopback("127.0.0.1:6379")
    assert cluster.is_loopback("ray://localhost:10001")
    assert not cluster.is_loopback("10.0.0.5:6379")


def test_storage_resolution(tmp_path):
    assert cluster.resolve_storage("s3://bucket/ckpt", tmp_path) == "s3://bucket/ckpt"
    assert cluster.resolve_storage("checkpoints", tmp_path) == str(tmp_path / "checkpoints")
    with pytest.raises(ConfigError, match=r"train\.storage_path is empty"):
        cluster.resolve_storage("", tmp_path)


def test_unwritable_storage_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"train\.storage_path: cannot write checkpoints to .*a-file/checkpoints"):
        cluster.check_storage_writable(str(blocker / "checkpoints"))


def test_remove_run_deletes_only_that_run(tmp_path):
    (tmp_path / "train-a" / "checkpoint_1").mkdir(parents=True)
    (tmp_path / "train-b").mkdir()
    cluster.remove_run(str(tmp_path), "train-a")
    assert not (tmp_path / "train-a").exists()
    assert (tmp_path / "train-b").exists()


def test_loopback_kept_when_ray_was_imported_first():
    # Ray reads its multi-node setting on import. A caller that imported Ray
    # first must still connect to 127.0.0.1, not the machine's network address.
    script = (
        "import ray\n"
        "from ray._private import services\n"
        "from pipelines import cluster\n"
        "cluster.keep_ray_on_loopback()\n"
        "print(services.canonicalize_bootstrap_address('127.0.0.1:6379'))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "127.0.0.1:6379"


def test_local_workers_above_machine_cpus_rejected():
    params = {"num_workers": cluster.machine_cpus() + 1, "cpus_per_worker": 1}
    with pytest.raises(ConfigError, match=r"train\.num_workers .* but this machine has \d+; lower train\.num_workers"):
        cluster.check_local_cpus(params)


def test_local_workers_within_machine_cpus_accepted():
    assert cluster.check_local_cpus({"num_workers": 1, "cpus_per_worker": 1}) == 1
