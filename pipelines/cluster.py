"""Ray cluster set-up for the train stage: join or start Ray, and check settings before training.

Each check runs before any training worker is requested, so a wrong setting
fails within seconds with a message naming the param to change, instead of
Ray waiting without end for a cluster or resources that do not exist.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0


def ray_address(params: dict[str, Any]) -> str | None:
    """Return `train.ray_address`, else RAY_ADDRESS, else None (start Ray locally)."""
    return params.get("ray_address") or os.environ.get("RAY_ADDRESS") or None


def address_setting(params: dict[str, Any]) -> str:
    return "train.ray_address" if params.get("ray_address") else "RAY_ADDRESS"


def check_reachable(address: str, setting: str) -> None:
    """Open a TCP connection to the cluster's address, failing fast when nothing listens there."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"{setting} is {address!r}, expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as error:
        raise ConfigError(
            f"{setting} is {address!r}, but no Ray cluster is listening there ({error}); "
            f"start the cluster or change {setting}"
        ) from error


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"tcp://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def keep_ray_on_loopback() -> None:
    """Make Ray keep 127.0.0.1 as its own and the cluster's address.

    With multi-node mode on, Ray rewrites 127.0.0.1 to the machine's network
    address before it connects, so joining a loopback cluster would dial an
    address that nothing listens on. The environment variable turns the mode
    off when Ray is first imported, and in every process Ray starts. If the
    caller imported Ray earlier, Ray has already read the variable, so the
    constant it set then is reset too.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def machine_cpus() -> int:
    """Return the CPUs this process may run on: its CPU affinity where the OS reports one, else all CPUs."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_local_cpus(params: dict[str, Any]) -> int:
    """Return the CPUs a local Ray instance needs, rejecting more than this machine has.

    A local instance is sized to the workers, so Ray would start every worker
    on too few cores and the run would crawl or run out of memory.
    """
    workers = int(params["num_workers"])
    needed = workers * int(params["cpus_per_worker"])
    available = machine_cpus()
    if needed > available:
        raise ConfigError(
            f"train.num_workers ({workers}) x train.cpus_per_worker ({params['cpus_per_worker']}) needs "
            f"{needed} CPU(s), but this machine has {available}; lower train.num_workers, or set RAY_ADDRESS "
            "(or train.ray_address) to a larger cluster"
        )
    return needed


def init_ray(params: dict[str, Any]) -> None:
    """Join the configured cluster, or start a local Ray instance that listens on 127.0.0.1 only."""
    address = ray_address(params)
    # Ship this workspace's `pipelines` package to every worker, so a cluster runs
    # the same stage code as the workspace whatever it has installed.
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]}
    if address:
        check_reachable(address, address_setting(params))
    if not address or is_loopback(address):
        keep_ray_on_loopback()
    import ray

    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, configure_logging=False)
        return
    workers_cpus = check_local_cpus(params)
    log.info("starting a local Ray instance on 127.0.0.1 with %d CPU(s)", workers_cpus)
    # address="local" starts a new instance even when another Ray cluster on this machine
    # (or a stale record of one in /tmp/ray) would otherwise be joined.
    ray.init(address="local", num_cpus=workers_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=True, configure_logging=False)


def check_resources(params: dict[str, Any]) -> None:
    """Reject a worker group larger than the cluster, which Ray would otherwise wait for forever."""
    import ray

    resources = ray.cluster_resources()
    workers = int(params["num_workers"])
    cpus_needed = workers * int(params["cpus_per_worker"])
    if resources.get("CPU", 0) < cpus_needed:
        raise ConfigError(
            f"train.num_workers ({workers}) x train.cpus_per_worker ({params['cpus_per_worker']}) needs "
            f"{cpus_needed} CPU(s), but the Ray cluster has {resources.get('CPU', 0):g}; "
            "lower train.num_workers or add nodes"
        )
    if params.get("use_gpu") and resources.get("GPU", 0) < workers:
        raise ConfigError(
            f"train.use_gpu is true with {workers} worker(s), but the Ray cluster has "
            f"{resources.get('GPU', 0):g} GPU(s); set train.use_gpu: false or add GPU nodes"
        )


def resolve_storage(value: str, root: Path) -> str:
    """Return the checkpoint storage as an absolute local path or an fsspec/pyarrow URI."""
    if not value:
        raise ConfigError("train.storage_path is empty, expected a folder or a URI such as s3://bucket/path")
    if "://" in value:
        return value
    return str((root / value).resolve())


def check_storage_writable(storage: str) -> None:
    """Write and remove a probe file, so an unwritable path fails before training starts."""
    if "://" in storage:
        return  # remote stores are checked by Ray when it writes the first checkpoint
    folder = Path(storage)
    probe = folder / f".write-check-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"train.storage_path: cannot write checkpoints to {storage} ({error.strerror or error}); "
            "choose a writable folder or URI"
        ) from error


def remove_run(storage: str, name: str) -> None:
    """Delete a previous run's checkpoints, so training starts fresh."""
    if "://" in storage:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(f"{storage.rstrip('/')}/{name}")
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            filesystem.delete_dir(path)
        return
    shutil.rmtree(Path(storage) / name, ignore_errors=True)
