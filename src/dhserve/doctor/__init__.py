"""`dhserve doctor`: checks the machine, the configuration and the service's state the way the
service will meet them — the Gunicorn config as Gunicorn loads it, the ONNX Runtime providers a
session really gets, the models as they load — and says for each problem what to do.

Nothing here is imported by the service itself. Each check group is a module of its own, named
in CHECK_GROUPS and imported only when its group runs, so `dhserve doctor --only network`
loads no ONNX Runtime, PyAV or SQLAlchemy. What could crash, hang or leave a CUDA context (an
ONNX Runtime session on a GPU provider, asking torch about CUDA) runs in a child process
(doctor.base's probes) with the environment the doctor was started with; the Gunicorn config is
loaded here, as Gunicorn's master would load it, so that what it imports is seen. What the
groups share (NVML's view, the Gunicorn config) is read when one of them first needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from dhserve.config import (
    ServingSettings,
    Settings,
    diagnostic_environment,
    process_environment,
)
from dhserve.doctor.base import ERROR, OK, Check, Facts, guarded, resolve
from dhserve.doctor.report import Report

# Adding a group: one module, one line here. The order is the report's.
CHECK_GROUPS = {
    "system": "dhserve.doctor.system:system_checks",
    "gpu": "dhserve.doctor.gpu:gpu_checks",
    "onnxruntime": "dhserve.doctor.onnxruntime:onnxruntime_checks",
    "pytorch": "dhserve.doctor.pytorch:pytorch_checks",
    "gunicorn": "dhserve.doctor.gunicorn:gunicorn_checks",
    "models": "dhserve.doctor.models:model_checks",
    "media": "dhserve.doctor.media:media_checks",
    "storage": "dhserve.doctor.storage:storage_checks",
    "network": "dhserve.doctor.network:network_checks",
}
GROUPS = tuple(CHECK_GROUPS)
# The Gunicorn group runs first: what the config file imports into the process is noticed
# only before the other groups import ONNX Runtime and the rest themselves.
RUN_ORDER = ("gunicorn", *(group for group in GROUPS if group != "gunicorn"))
# What Facts calls, once, when a group first needs the Gunicorn config: resolved by name like
# the groups, so that importing this package (the CLI does, for GROUPS) loads no serving code.
CONFIG_LOADER = "dhserve.doctor.gunicorn:load_chosen"

__all__ = ["CHECK_GROUPS", "GROUPS", "Check", "Report", "run_checks"]


def run_checks(config: Path | None = None, data_dir: Path | None = None,
               groups: Iterable[str] | None = None) -> Report:
    """Runs the checks (all groups, or `groups`) on this process's environment (the settings
    as the service reads them; the probes' child processes get it as it is now); the report
    lists them in GROUPS order. `config`: the Gunicorn config file (default: what Gunicorn
    would pick, else `dhserve serve`'s own settings)."""
    wanted = set(groups or GROUPS)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown check group(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(GROUPS)}")
    environ = process_environment()    # before loading a config file can change it
    settings_checks, settings, serving = _settings(environ, data_dir)
    facts = Facts(settings, serving, diagnostic_environment(environ), environ=environ,
                  load_config=lambda facts: resolve(CONFIG_LOADER)(config, facts))
    found: dict[str, list[Check]] = {"system": settings_checks}
    for group in RUN_ORDER:
        if group in wanted:
            # resolved inside the guard: a group whose module cannot be imported (a broken
            # PyAV, say) is an error line of its own, and the other groups still run
            found.setdefault(group, []).extend(
                guarded(group, partial(_run_group, CHECK_GROUPS[group], facts)))
    return Report(tuple(check for group in GROUPS if group in wanted
                        for check in found.get(group, [])))


def _run_group(target: str, facts: Facts) -> list[Check]:
    return resolve(target)(facts)


def _settings(environ: dict[str, str], data_dir: Path | None
              ) -> tuple[list[Check], Settings, ServingSettings | None]:
    """The settings as the service would read them, and the system group's lines on them;
    an invalid variable is an error line and the checks go on with the defaults."""
    found = []
    try:
        settings = Settings.from_env(environ, data_dir=data_dir)
    except ValueError as exc:
        found.append(Check("system", "settings", ERROR, f"invalid setting: {exc}",
                           "fix or unset the variable the message names (the service refuses "
                           "to start with it); the other checks use the defaults"))
        settings = Settings(data_dir=data_dir) if data_dir else Settings()
    try:
        serving = ServingSettings.from_env(environ)
    except ValueError as exc:
        found.append(Check("system", "serving settings", ERROR, f"invalid setting: {exc}",
                           "fix or unset the variable the message names (`dhserve serve` and "
                           "gunicorn.conf.py refuse to start with it)"))
        serving = None
    if not found:
        found.append(Check("system", "settings", OK, "DHSERVE_* and GUNICORN_* variables are "
                           f"valid (data dir {settings.data_dir.absolute()})",
                           data={"data_dir": str(settings.data_dir.absolute())}))
    return found, settings, serving
