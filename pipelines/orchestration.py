"""Run the DVC pipeline one stage at a time for a scheduler such as Airflow.

The stage list and its order come from `dvc.yaml`, so a stage added there
(for example between `split` and `train`) becomes a task without any change
to the DAG files. Each stage runs as `dvc repro --single-item <stage>` in the
workspace, so a scheduled run and a local `dvc repro` share the stage code,
params, cache and `dvc.lock`, and DVC skips a stage whose inputs did not
change. Nothing here imports Airflow, so tests and other schedulers can use it.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines import config
from pipelines.errors import ConfigError, DataError, ShoprecError

log = logging.getLogger(__name__)

DVC_FILE = "dvc.yaml"
# Keys of a dvc.yaml stage whose entries are files the stage writes.
OUTPUT_KEYS = ("outs", "metrics", "plots")
# A stage command of this form names the module whose docstring documents the task.
MODULE_COMMAND = re.compile(r"^python3? -m (pipelines\.\w+)\b")
# The line that `pipelines.cli.run_stage` logs when a stage rejects its input or params.
INPUT_ERROR = re.compile(r"ERROR pipelines: \w+ stage failed: (.*)")
OUTPUT_TAIL_LINES = 40


class StageFailed(ShoprecError):
    """A `dvc repro` of one stage exited with an error."""

    def __init__(self, stage: str, returncode: int, input_error: str | None, tail: list[str]):
        self.stage, self.returncode, self.input_error, self.tail = stage, returncode, input_error, tail
        reason = f"the stage rejected its input: {input_error}" if input_error else "see the output above"
        super().__init__(f"stage '{stage}' failed (dvc repro exit code {returncode}); {reason}")


@dataclass(frozen=True)
class Stage:
    """One stage of dvc.yaml, with the fields the scheduler reads."""

    name: str
    command: str
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class StageRun:
    """Outcome of one stage in DVC: ran, restored from the run cache, or skipped."""

    stage: str
    outcome: str
    output: list[str] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------- the stage list


def read_stages(root: Path) -> list[Stage]:
    """Read the stages of `root/dvc.yaml` in the order DVC runs them.

    A stage comes after every stage whose outputs it depends on; stages that
    do not depend on each other keep their order in dvc.yaml. Reads only
    dvc.yaml and the stage modules' source text, so a DAG file can call it
    at parse time.
    """
    path = root / DVC_FILE
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: pipeline file not found; is {root} the shoprec workspace?") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    entries = document.get("stages")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: expected a non-empty 'stages' mapping")
    stages = [_stage(path, name, entry, root) for name, entry in entries.items()]
    return order_stages(stages, path)


def _stage(path: Path, name: str, entry: Any, root: Path) -> Stage:
    if isinstance(entry, dict) and ("foreach" in entry or "matrix" in entry):
        raise ConfigError(f"{path}: stage '{name}' uses foreach or matrix, which the scheduler does not expand; "
                          "write one stage per item instead")
    if not isinstance(entry, dict) or "cmd" not in entry:
        raise ConfigError(f"{path}: stage '{name}' has no 'cmd'")
    command = entry["cmd"] if isinstance(entry["cmd"], str) else " && ".join(entry["cmd"])
    outs = [_entry_path(item) for key in OUTPUT_KEYS for item in entry.get(key) or []]
    params = [_entry_path(item) for item in entry.get("params") or []]
    return Stage(name=name, command=command, deps=tuple(_entry_path(item) for item in entry.get("deps") or []),
                 outs=tuple(outs), params=tuple(params), doc=_module_doc(root, command))


def _entry_path(item: Any) -> str:
    """The path of a deps/outs entry: a plain string, or the single key of a mapping with options."""
    if isinstance(item, dict):
        return str(next(iter(item)))
    return str(item)


def _module_doc(root: Path, command: str) -> str:
    """The docstring of the module a stage command runs, read without importing it."""
    match = MODULE_COMMAND.match(command)
    if not match:
        return ""
    source = root / (match.group(1).replace(".", "/") + ".py")
    try:
        return ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""


def _overlaps(dep: str, out: str) -> bool:
    dep, out = dep.rstrip("/"), out.rstrip("/")
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def order_stages(stages: list[Stage], source: Path | str = DVC_FILE) -> list[Stage]:
    """Sort stages so that each follows the stages that write its dependencies."""
    upstream = {
        stage.name: {other.name for other in stages
                     if other is not stage and any(_overlaps(dep, out) for dep in stage.deps for out in other.outs)}
        for stage in stages
    }
    ordered: list[Stage] = []
    remaining = list(stages)
    while remaining:
        done = {stage.name for stage in ordered}
        ready = next((stage for stage in remaining if upstream[stage.name] <= done), None)
        if ready is None:
            names = ", ".join(stage.name for stage in remaining)
            raise ConfigError(f"{source}: the stages {names} depend on each other in a cycle")
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


# ---------------------------------------------------------------- running a stage


def stage_environment(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC and the stage commands it starts.

    The interpreter's own folder goes first on PATH, so `python -m pipelines.x`
    in dvc.yaml runs in the same virtual environment as the scheduler.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SHOPREC_WORKSPACE"] = str(root)
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra or {})
    return env


def run_command(command: list[str], root: Path, env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run `command` in `root`, logging each output line as it comes; return the exit code and the lines.

    The command runs in its own process group, which is killed when the caller
    is interrupted (for example by a task timeout), so no stage is left running.
    """
    lines: list[str] = []
    process = subprocess.Popen(command, cwd=root, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.strip():
                log.info("%s", line)
        return process.wait(), lines
    except BaseException:
        _kill_group(process)
        raise
    finally:
        process.stdout.close()


def _kill_group(process: subprocess.Popen) -> None:
    log.warning("stopping %s (pid %d) and its children", process.args[0], process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def dvc_command(*args: str) -> list[str]:
    """A DVC command line that uses the DVC installed beside this interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def stage_outcome(stage: str, lines: Iterable[str]) -> str:
    """Tell from `dvc repro` output whether the stage ran, came from the run cache, or was unchanged."""
    quoted = re.escape(f"'{stage}'")
    text = "\n".join(lines)
    if re.search(rf"Running stage {quoted}", text):
        return "ran"
    if re.search(rf"Stage {quoted} is cached - skipping run", text):
        return "restored from the run cache"
    if re.search(rf"Stage {quoted} didn't change, skipping", text):
        return "unchanged"
    return "unknown"


def run_stage(root: Path, stage: str, env: Mapping[str, str]) -> StageRun:
    """Reproduce one stage with `dvc repro --single-item` and report what DVC did.

    Raises StageFailed when DVC or the stage exits with an error; its
    `input_error` is set when the stage rejected its data or params, which
    a retry cannot fix.
    """
    returncode, lines = run_command(dvc_command("repro", "--single-item", stage), root, env)
    if returncode != 0:
        errors = [match.group(1) for line in lines if (match := INPUT_ERROR.search(line))]
        raise StageFailed(stage, returncode, errors[0] if errors else None, lines[-OUTPUT_TAIL_LINES:])
    result = StageRun(stage, stage_outcome(stage, lines), lines)
    if result.outcome == "unchanged":
        log.info("stage '%s' skipped by DVC: its code, dependencies and params did not change", stage)
    elif result.outcome == "restored from the run cache":
        log.info("stage '%s' skipped by DVC: outputs restored from the run cache of an identical earlier run",
                 stage)
    else:
        log.info("stage '%s' %s", stage, result.outcome)
    return result


# ---------------------------------------------------------------- gate and publish


@dataclass(frozen=True)
class GateDecision:
    """Whether the stages after the gate run, and why."""

    promote: bool
    reason: str


def gate_decision(root: Path) -> GateDecision:
    """Read gate.json and promote.force from the workspace and decide whether promotion goes ahead."""
    path = root / config.GATE_FILE
    try:
        gate = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found; the evaluate stage writes it") from error
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON: {error}") from error
    failed = [check.get("name", "?") for check in gate.get("checks", []) if not check.get("passed")]
    forced = bool(config.section(config.load_params(root / config.PARAMS_FILE), "promote").get("force", False))
    if gate.get("passed"):
        return GateDecision(True, "gate passed")
    if forced:
        return GateDecision(True, f"gate failed ({', '.join(failed) or 'no checks'}) but promote.force is set")
    return GateDecision(False, f"gate failed: {', '.join(failed) or 'no checks passed'}; production unchanged")


def default_remote(root: Path, env: Mapping[str, str]) -> str:
    """The name of the DVC remote that `dvc push` uses when none is named."""
    returncode, lines = run_command(dvc_command("remote", "default"), root, env)
    name = lines[-1].strip() if lines else ""
    if returncode != 0 or not name:
        raise ConfigError(f"{root}/.dvc/config: no default DVC remote; run `make dvc-init` or "
                          "`dvc remote add --default NAME URL`, or name one in SHOPREC_DVC_REMOTE")
    return name


def publish(root: Path, remote: str | None, env: Mapping[str, str]) -> dict[str, Any]:
    """Push every DVC-tracked data and model output of the workspace to `remote` (or the default remote)."""
    name = remote or default_remote(root, env)
    returncode, lines = run_command(dvc_command("push", "--remote", name), root, env)
    if returncode != 0:
        raise StageFailed("publish", returncode, None, lines[-OUTPUT_TAIL_LINES:])
    text = "\n".join(lines)
    match = re.search(r"(\d+) files? pushed", text)
    pushed = int(match.group(1)) if match else 0
    log.info("pushed %d file(s) to DVC remote '%s'", pushed, name)
    return {"remote": name, "pushed": pushed}
