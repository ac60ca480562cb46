"""`dhserve doctor`: checks the machine, the configuration and the service's state the way the
service will meet them — the Gunicorn config as Gunicorn loads it, the ONNX Runtime providers a
session really gets, the models as they load — and says for each problem what to do.

Nothing here is imported by the service itself. What could crash, hang or leave a CUDA
context (an ONNX Runtime session on a GPU provider, asking torch about CUDA) runs in a child
process (doctor.probes) with the environment the doctor was started with; the Gunicorn config
is loaded here, as Gunicorn's master would load it, so that what it imports is seen. Only the
groups asked for run, and what they share (NVML's view, the Gunicorn config) is read when one
of them first needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from dhserve.config import ServingSettings, Settings, diagnostic_environment
from dhserve.doctor.checks import ERROR, OK, Check, Facts, guarded
from dhserve.doctor.report import Report

GROUPS = ("system", "gpu", "onnxruntime", "pytorch", "gunicorn", "models", "media", "storage",
          "network")

__all__ = ["GROUPS", "Check", "Report", "run_checks"]


def run_checks(config: Path | None = None, data_dir: Path | None = None,
               groups: Iterable[str] | None = None) -> Report:
    """Runs the checks (all groups, or `groups`), in GROUPS order, on this process's
    environment (the settings as the service reads them; the probes' child processes get it
    as it is now). `config`: the Gunicorn config file (default: what Gunicorn would pick, else
    `dhserve serve`'s own settings)."""
    from dhserve.doctor import checks as c
    from dhserve.doctor.gunicorn import gunicorn_checks, loader

    wanted = set(groups or GROUPS)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown check group(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(GROUPS)}")
    environ = dict(os.environ)         # before loading a config file can change it
    settings_checks, settings, serving = _settings(environ, data_dir)
    facts = Facts(settings, serving, diagnostic_environment(environ), environ=environ,
                  load_config=loader(config))
    found: dict[str, list[Check]] = {"system": settings_checks}

    def run(group: str, check: Callable[[], list[Check]]) -> None:
        if group in wanted:
            found.setdefault(group, []).extend(guarded(group, check))

    # The Gunicorn config first: what it imports is noticed only before the doctor imports
    # ONNX Runtime itself.
    run("gunicorn", lambda: gunicorn_checks(facts))
    run("system", lambda: c.system_checks(facts))
    run("gpu", lambda: c.gpu_checks(facts))
    run("onnxruntime", lambda: _onnxruntime(facts))
    run("pytorch", lambda: c.pytorch_checks(facts, *_ort_cuda_majors()))
    run("models", lambda: c.model_checks(facts))
    run("media", lambda: c.media_checks(facts))
    run("storage", lambda: c.storage_checks(facts))
    run("network", lambda: c.network_checks(facts))
    return Report(tuple(check for group in GROUPS if group in wanted
                        for check in found.get(group, [])))


def _onnxruntime(facts: Facts) -> list[Check]:
    from dhserve.doctor.providers import onnxruntime_checks

    return onnxruntime_checks(facts)


def _settings(environ: dict[str, str], data_dir: Path | None
              ) -> tuple[list[Check], Settings, ServingSettings | None]:
    """The settings as the service would read them; an invalid variable is an error line and
    the checks go on with the defaults."""
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


def _ort_cuda_majors() -> tuple[int | None, int]:
    """The CUDA major onnxruntime-gpu needs (None: not installed), and the one the installed
    onnxruntime's GPU build would need (12 when there is none)."""
    from dhserve.doctor.providers import installed_distributions
    from dhserve.runtime.onnx import cuda_major_for_runtime

    found = installed_distributions()
    gpu = found.get("onnxruntime-gpu")
    any_version = gpu or next(iter(found.values()), None)
    return (cuda_major_for_runtime(gpu) if gpu else None,
            cuda_major_for_runtime(any_version) if any_version else 12)
