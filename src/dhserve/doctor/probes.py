"""The probes the doctor runs in child processes: an ONNX Runtime session on one provider, and
what torch says about CUDA.

A segfault or abort in cuDNN or TensorRT, a hung cuInit, a CUDA context, ONNX Runtime's changed
log level: all stay in the child, which the doctor reports on and outlives. The child runs with
the environment the doctor was started with, answers one JSON line on stdout, and everything
else it says (ONNX Runtime's own log, on file descriptor 2) comes back as its log.

    python -m dhserve.doctor.probes onnxruntime '{"provider": "CPUExecutionProvider", ...}'
    python -m dhserve.doctor.probes torch
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhserve.errors import first_line


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


def start(args: list[str], environ: dict[str, str], timeout: float) -> RunningProbe:
    """Starts a probe; probes started together run side by side."""
    process = subprocess.Popen([sys.executable, "-m", "dhserve.doctor.probes", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environ, text=True,
                               errors="replace")
    return RunningProbe(process, time.monotonic(), timeout)


def finish(probe: RunningProbe) -> ProbeResult:
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
    log = err.splitlines()[-200:]
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
        said = next((line.strip() for line in reversed(log) if line.strip()), "no output")
        problem = f"the probe process exited with status {code} without an answer: {said}"
    return ProbeResult(answer if isinstance(answer, dict) else None, log, seconds, problem)


def run(args: list[str], environ: dict[str, str], timeout: float) -> ProbeResult:
    return finish(start(args, environ, timeout))


# -- inside the child ---------------------------------------------------------------------------

def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def onnxruntime_probe(request: dict[str, Any]) -> dict[str, Any]:
    """A session of the tiny Conv model on `request["provider"]` (with the CPU after it, as
    dhserve makes them, through runtime.onnx): the providers it really runs on, and whether it
    computes right. TensorRT engines built for it go to a temporary folder, deleted after."""
    import numpy as np
    import onnxruntime as ort

    from dhserve.doctor.providers import CPU, TENSORRT, tiny_model
    from dhserve.runtime import onnx as runtime

    provider = request["provider"]
    answer: dict[str, Any] = {"provider": provider, "version": ort.__version__,
                              "compiled": ort.get_available_providers(),
                              "session_providers": [], "result_ok": False, "error": None}
    ort.set_default_logger_severity(2)    # warnings: a provider that failed to load is one
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dhserve-doctor-") as folder:
        model = Path(folder) / "probe.onnx"
        model.write_bytes(tiny_model())
        config = runtime.SessionConfig(
            device="cpu" if provider == CPU else request["device"],
            gpu_provider="tensorrt" if provider == TENSORRT else "cuda",
            cudnn_conv_algo_search=request["cudnn_conv_algo_search"],
            trt_cache_dir=Path(folder) / "trt-cache")
        options = runtime.session_options(config)
        options.log_severity_level = 2
        what = "the doctor's probe model"
        try:
            runtime.check_available(config)
            session = runtime.open_session(model, config, what, options)
        except Exception as exc:  # noqa: BLE001 - GpuUnavailable, ModelError, EPFail, ...
            answer["error"] = _said(exc).removesuffix("; " + runtime.install_hint())
            answer["ms"] = round((time.perf_counter() - started) * 1000, 1)
            return answer
        answer["session_providers"] = session.get_providers()
        try:
            runtime.check_session(session, config, what)   # and no CPU fallback from here on
        except runtime.GpuUnavailable:
            answer["ms"] = round((time.perf_counter() - started) * 1000, 1)
            return answer                    # it landed elsewhere: the providers say where
        try:
            x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
            y = session.run(None, {"x": x})[0]
            answer["result_ok"] = bool(np.allclose(y, 2 * x))
        except Exception as exc:  # noqa: BLE001 - a kernel that fails on this GPU
            answer["error"] = _said(exc)
    answer["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return answer


def torch_probe() -> dict[str, Any]:
    """What torch says about CUDA with this environment, and whether asking initialised CUDA
    here (libcuda loaded): a process that then forks would hand its workers a broken CUDA."""
    from dhserve.serving.cuda_guard import cuda_initialised_here

    try:
        import torch

        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # noqa: BLE001 - a broken install
        return {"error": _said(exc)}
    return {"version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": available, "device_count": count,
            "cuda_initialised": cuda_initialised_here()}


def main(argv: list[str]) -> None:
    answer_fd = os.dup(1)
    os.dup2(2, 1)                  # anything a library prints joins the log on stderr
    kind = argv[0]
    answer = torch_probe() if kind == "torch" else onnxruntime_probe(json.loads(argv[1]))
    sys.stdout.flush()
    os.write(answer_fd, (json.dumps(answer, default=str) + "\n").encode())


if __name__ == "__main__":
    main(sys.argv[1:])
