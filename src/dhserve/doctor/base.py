"""The doctor's framework, which every check group builds on: a finding (`Check`) and its
severities, what the checks look at (`Facts`, each part read once and only when asked), the
guard that turns a failing check into an error line, and the runner of probes in child
processes.

A check never raises: what goes wrong while checking (a library that cannot be imported, a
driver that answers garbage) becomes an error line naming the exception, and the other checks
still run. Remedies say what to set or run for this project, not what went wrong in general.

Probes: what could crash, hang or leave a CUDA context (an ONNX Runtime session on a GPU
provider, asking torch about CUDA) runs in a child process started with the environment the
doctor was started with. A segfault in cuDNN or TensorRT, a hung cuInit, a CUDA context, ONNX
Runtime's changed log level: all stay in the child, which the doctor reports on and outlives.
The child calls one probe function ("module:function", as the group table names groups) with
a JSON request, answers one JSON line on stdout, and everything else it says (ONNX Runtime's
own log, on file descriptor 2) comes back as its log.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dhserve.config import ServingSettings, Settings, process_environment
from dhserve.errors import first_line
from dhserve.runtime.gpu import GpuSummary, read_gpus

OK, WARNING, ERROR = "ok", "warning", "error"
SEVERITY = {OK: 0, WARNING: 1, ERROR: 2}      # also the exit status of a report that bad
BYTES_PER_GIB = 2**30
BYTES_PER_MIB = 2**20
PROBE_LOG_LINES = 200           # the end of a probe's stderr that is kept
PROBE_PACKAGE = "dhserve.doctor."   # a child runs probe functions from the doctor only


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, what to do about it."""

    group: str                 # a name in doctor.GROUPS
    name: str                  # unique within its group
    status: str                # ok | warning | error
    detail: str                # what was found, one line
    remedy: str = ""           # what to do (every warning and error has one)
    fix_hint: str = ""         # the exact commands or lines to change (--fix-hints)
    data: dict[str, Any] = field(default_factory=dict)   # the figures, for --json

    def __post_init__(self) -> None:
        if self.status not in SEVERITY:
            raise ValueError(f"status must be ok, warning or error; got {self.status!r}")


class Facts:
    """What the checks look at, each read once and only when a check first asks: the settings
    (from the environment, as the service would read them), the other variables that matter,
    the environment itself (given to the probes the doctor runs as child processes), NVML's
    view of the GPUs, and the Gunicorn configuration with dhserve's serving plan in it.

    `gpu` may be given (an NVML summary, as tests and pure decisions do); `load_config`
    returns a doctor.gunicorn.LoadedConfig (none: no configuration, no plan)."""

    def __init__(self, settings: Settings, serving: ServingSettings | None,
                 variables: dict[str, str | None], gpu: GpuSummary | None = None,
                 environ: Mapping[str, str] | None = None,
                 load_config: Callable[[Facts], Any] | None = None):
        self.settings = settings
        self.serving = serving
        self.variables = variables
        self.environ = process_environment() if environ is None else dict(environ)
        self._gpu = gpu
        self._load_config = load_config
        self._config: Any = None
        self._config_loaded = load_config is None

    @property
    def gpu(self) -> GpuSummary:
        if self._gpu is None:
            self._gpu = read_nvml()
        return self._gpu

    @property
    def config(self) -> Any:
        """The Gunicorn configuration, loaded the first time a check asks."""
        if not self._config_loaded:
            self._config_loaded = True
            if self._load_config is not None:
                self._config = self._load_config(self)
        return self._config

    @property
    def plan(self) -> Any:
        """dhserve's serving plan (serving.plan.ServingPlan) in the configuration; None when
        it has none or could not be loaded."""
        return getattr(self.config, "plan", None)

    @property
    def binds(self) -> list[str]:
        """Where the server will listen: the configuration's binds, else the settings'."""
        cfg = getattr(self.config, "cfg", None)
        if cfg is not None:
            return list(cfg.bind)
        if self.plan is not None:
            return [self.plan.bind]
        return [(self.serving.bind if self.serving is not None else None)
                or self.settings.bind]

    def _plan_gpus(self) -> str | None:
        """The GPUs the serving plan renders on (None: it renders on none)."""
        if self.plan is None or all(d.gpu is None for d in self.plan.devices):
            return None
        return ", ".join(d.label for d in self.plan.devices)

    def cuda_renderers(self) -> list[str]:
        """What makes renders run on CUDA here: DHSERVE_DEVICE, or a serving plan that puts
        renderers on GPUs (each then runs with DHSERVE_DEVICE=cuda:0, pinned to its GPU)."""
        asks = []
        if self.settings.device.startswith("cuda"):
            asks.append(f"DHSERVE_DEVICE={self.settings.device}")
        if (gpus := self._plan_gpus()) is not None:
            asks.append(f"the serving plan (renderers on {gpus})")
        return asks

    def gpu_requests(self) -> list[str]:
        """What in the configuration asks for a GPU (empty: CPU mode is what was asked)."""
        asks = []
        if self.settings.device.startswith("cuda"):
            asks.append(f"DHSERVE_DEVICE={self.settings.device}")
        if self.serving is not None:
            if self.serving.gpus not in ("auto", "none"):
                asks.append(f"DHSERVE_GPUS={self.serving.gpus}")
            if self.serving.profile not in ("auto", "cpu"):
                asks.append(f"DHSERVE_PROFILE={self.serving.profile}")
        if (gpus := self._plan_gpus()) is not None:
            asks.append(f"the Gunicorn config's plan (renders on {gpus})")
        return asks


def resolve(target: str) -> Callable[..., Any]:
    """The function a "module:function" string names (the group table's and the probes'
    entries), imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def said(exc: BaseException) -> str:
    """An exception as a finding quotes it: its type and first line."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def guarded(group: str, run: Callable[[], list[Check]], name: str = "check") -> list[Check]:
    """The checks `run` makes; a failure of the checking itself is one error line `name`,
    not a crash."""
    try:
        return run()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the doctor must survive anything
        return [failed(group, name, exc)]


def failed(group: str, name: str, exc: BaseException) -> Check:
    return Check(group, name, ERROR, f"the check itself failed: {said(exc)}",
                 "this environment breaks something dhserve needs; the exception names it "
                 "(rerun with `dhserve -v doctor` for the library's own messages)",
                 data={"exception": type(exc).__name__, "message": str(exc)[:2000]})


def read_nvml() -> GpuSummary:
    """NVML's summary (runtime.gpu); a failure beyond NVML's own errors (which it reports as
    `reason`) is kept as `error` for the gpu group to report, never raised."""
    try:
        return read_gpus()
    except Exception as exc:  # noqa: BLE001 - a broken driver or pynvml must not end the run
        return GpuSummary.unusable(f"NVML failed ({said(exc)})", error=said(exc))


# -- probes in child processes ------------------------------------------------------------------

@dataclass
class ProbeResult:
    """What a probe process gave: its answer, or why there is none."""

    answer: dict[str, Any] | None
    log: list[str] = field(default_factory=list)     # its stderr, last lines
    seconds: float = 0.0                             # the whole process, imports included
    problem: str | None = None                       # died, hung, or said nothing


@dataclass
class RunningProbe:
    process: subprocess.Popen
    started: float
    timeout: float


def start_probe(target: str, request: dict[str, Any], environ: Mapping[str, str],
                timeout: float) -> RunningProbe:
    """Starts the probe function `target` ("module:function" in dhserve.doctor) on `request`
    in a child process; probes started together run side by side."""
    if not target.startswith(PROBE_PACKAGE):
        raise ValueError(f"a probe is a function of the doctor's, not {target!r}")
    process = subprocess.Popen(
        [sys.executable, "-c", "from dhserve.doctor.base import probe_main; probe_main()",
         target, json.dumps(request)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(environ), text=True, errors="replace")
    return RunningProbe(process, time.monotonic(), timeout)


def finish_probe(probe: RunningProbe) -> ProbeResult:
    """The probe's answer; a probe past its timeout is killed and says so."""
    remaining = max(probe.started + probe.timeout - time.monotonic(), 0.1)
    try:
        out, err = probe.process.communicate(timeout=remaining)
        hung = False
    except subprocess.TimeoutExpired:
        probe.process.kill()
        out, err = probe.process.communicate()
        hung = True
    seconds = time.monotonic() - probe.started
    log = err.splitlines()[-PROBE_LOG_LINES:]
    code = probe.process.returncode
    answer = None
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    problem = None
    if hung:
        problem = (f"the probe gave no answer within {probe.timeout:g} s and was killed (a hung "
                   "driver call such as cuInit, or a TensorRT engine build that does not end)")
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        problem = f"the probe process died of {name} (a crash inside the native libraries)"
    elif answer is None:
        last = next((line.strip() for line in reversed(log) if line.strip()), "no output")
        problem = f"the probe process exited with status {code} without an answer: {last}"
    return ProbeResult(answer if isinstance(answer, dict) else None, log, seconds, problem)


def run_probe(target: str, request: dict[str, Any], environ: Mapping[str, str],
              timeout: float) -> ProbeResult:
    return finish_probe(start_probe(target, request, environ, timeout))


def probe_main(argv: list[str] | None = None) -> None:
    """Inside the child: runs the probe function named in argv ("module:function", then its
    JSON request) and writes its answer as one JSON line on the real stdout. Anything a library
    prints joins the log on stderr, so it cannot be taken for the answer."""
    target, request = argv or sys.argv[1:3]
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    answer = resolve(target)(json.loads(request))
    sys.stdout.flush()
    os.write(answer_fd, (json.dumps(answer, default=str) + "\n").encode())
