"""`dhserve doctor`: checks the machine, the configuration and the service's state the way the
service will meet them — the Gunicorn config as Gunicorn loads it, the ONNX Runtime providers a
session really gets, the models as they load — and says for each problem what to do.

Nothing here is imported by the service itself; running the checks imports ONNX Runtime, PyAV
and (when installed) PyTorch, but never makes a CUDA context through them in a way a forking
server would inherit: the doctor is its own process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from dhserve.config import ServingSettings, Settings, diagnostic_environment
from dhserve.doctor.checks import ERROR, OK, Check, Facts, guarded
from dhserve.doctor.report import Report

GROUPS = ("system", "gpu", "onnxruntime", "pytorch", "gunicorn", "models", "media", "storage",
          "network")

__all__ = ["GROUPS", "Check", "Report", "run_checks"]


def run_checks(config: Path | None = None, data_dir: Path | None = None,
               environ: Mapping[str, str] | None = None,
               groups: Iterable[str] | None = None) -> Report:
    """Runs the checks (all groups, or `groups`), in GROUPS order. `config`: the Gunicorn
    config file (default: what Gunicorn would pick, else `dhserve serve`'s own settings);
    `environ`: the variables to read settings from (default: this process's)."""
    from dhserve.doctor import checks as c
    from dhserve.doctor.gunicorn import gunicorn_checks
    from dhserve.doctor.providers import installed_distributions, onnxruntime_checks
    from dhserve.runtime.gpu import gpu_summary

    wanted = set(groups or GROUPS)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown check group(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(GROUPS)}")
    settings_checks, settings, serving = _settings(environ, data_dir)
    facts = Facts(settings, serving, diagnostic_environment(environ), gpu_summary())
    found: dict[str, list[Check]] = {"system": settings_checks}

    def run(group: str, check: Callable[[], list[Check]]) -> None:
        found.setdefault(group, []).extend(guarded(group, check))

    # The Gunicorn config first: it tells the other groups the plan and the bind, and what it
    # imports is noticed only before the doctor imports ONNX Runtime itself.
    run("gunicorn", lambda: gunicorn_checks(facts, config))
    run("system", lambda: c.system_checks(facts))
    run("gpu", lambda: c.gpu_checks(facts))
    if "onnxruntime" in wanted:
        run("onnxruntime", lambda: onnxruntime_checks(facts))
    if "pytorch" in wanted:
        run("pytorch", lambda: c.pytorch_checks(facts, _ort_cuda_major(installed_distributions())))
    if "models" in wanted:
        run("models", lambda: c.model_checks(facts))
    if "media" in wanted:
        run("media", lambda: c.media_checks(facts))
    if "storage" in wanted:
        run("storage", lambda: c.storage_checks(facts))
    if "network" in wanted:
        run("network", lambda: c.network_checks(facts))
    return Report(tuple(check for group in GROUPS if group in wanted
                        for check in found.get(group, [])))


def _settings(environ: Mapping[str, str] | None, data_dir: Path | None
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


def _ort_cuda_major(distributions: dict[str, str]) -> int | None:
    from dhserve.runtime.onnx import cuda_major_for_runtime

    version = distributions.get("onnxruntime-gpu")
    return cuda_major_for_runtime(version) if version else None
