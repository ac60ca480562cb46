"""The onnxruntime group: which package is installed, which providers are compiled in, and
which are really usable here: a tiny session is made on each, in a child process
(SESSION_PROBE, session_probe), and asked which providers it runs on.

`get_available_providers()` lists what was compiled in, not what works: when the CUDA or cuDNN
libraries cannot be loaded ONNX Runtime builds the session on the CPU without an exception and
says why only in its own log (on file descriptor 2, past Python). The probe's log is kept and
the reason read from it; a probe that crashes or hangs is a finding, not the doctor's end.
"""

from __future__ import annotations

import re
import struct
import tempfile
import time
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from dhserve.doctor.base import (
    ERROR,
    OK,
    WARNING,
    Check,
    Facts,
    ProbeResult,
    RunningProbe,
    failed,
    finish_probe,
    guarded,
    said,
    start_probe,
)

# Every distribution that installs the `onnxruntime` module: two of them overwrite each other.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                     "onnxruntime-openvino", "onnxruntime-qnn", "onnxruntime-training")
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
SESSION_PROBE = "dhserve.doctor.onnxruntime:session_probe"
# Seconds a probe may take, the process's imports included: CUDA's start and cuDNN's search
# take seconds, a TensorRT engine build (even for one Conv) tens of seconds.
PROBE_TIMEOUT_S = {CPU: 60.0, CUDA: 120.0, TENSORRT: 300.0}
MISSING_LIBRARY = re.compile(r"([\w.+-]+\.(?:so(?:\.\d+)*|dll)): cannot open shared object file"
                             r"|LoadLibrary failed with error \d+ \"[^\"]*\" when trying to load "
                             r"\"[^\"]*?([\w.+-]+\.dll)\"")
ANSI = re.compile(r"\x1b\[[0-9;]*m")       # ONNX Runtime colours its log on a terminal
REQUIRES = re.compile(r"Require (cuDNN [\d.*]+) and (CUDA [\d.*]+)")
CUDA_LIBRARIES = re.compile(r"cudnn|cublas|cudart|cufft|curand|nvrtc|libcuda|nvcuda",
                            re.IGNORECASE)
# ONNX Runtime / CUDA messages → what to do about them, for this project
KNOWN_FAILURES = (
    (re.compile(r"driver version is insufficient|CUDA failure 35", re.IGNORECASE),
     ("the NVIDIA driver is older than this CUDA: upgrade the driver (`nvidia-smi` shows the "
     "highest CUDA it supports), or install an onnxruntime-gpu built for an older CUDA")),
    (re.compile(r"no CUDA-capable device|CUDA failure 100", re.IGNORECASE),
     ("CUDA sees no GPU: CUDA_VISIBLE_DEVICES hides it, or the container has no GPU "
     "(`docker run --gpus all`)")),
    (re.compile(r"no kernel image is available|CUDA failure 209", re.IGNORECASE),
     ("this onnxruntime-gpu has no kernels for this GPU's architecture (too new or too old): "
     "install a release that supports it")),
    (re.compile(r"out of memory|CUDA failure 2\b", re.IGNORECASE),
     "the GPU is full: see `nvidia-smi` for who holds its memory"),
    (re.compile(r"CUDA failure 999|unknown error", re.IGNORECASE),
     "the driver is in a bad state (after a suspend, an Xid error): reload nvidia_uvm or reboot"),
)


# -- a tiny model, without the onnx package -------------------------------------------------
# ONNX files are protobuf messages; the few fields a one-node graph needs are written here by
# hand (field numbers from onnx.proto). y = Conv(x, w) with one 1x1 weight of 2.0: a Conv, so
# a CUDA session really runs cuDNN, and a result the check can verify (y == 2x).

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    payload = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)            # Dimension.dim_value
    tensor_type = _field(1, 1) + _field(2, dims)                       # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))         # name, TypeProto


def tiny_model() -> bytes:
    """A valid ONNX model (IR 8, opset 17): x (1,1,4,4) → Conv with w = 2.0 → y (1,1,4,4)."""
    weight = (b"".join(_field(1, 1) for _ in range(4)) + _field(2, 1) + _field(8, "w")
              + _field(9, struct.pack("<f", 2.0)))                    # dims, FLOAT, name, raw
    node = _field(1, "x") + _field(1, "w") + _field(2, "y") + _field(3, "conv") \
        + _field(4, "Conv")
    graph = (_field(1, node) + _field(2, "dhserve_doctor") + _field(5, weight)
             + _field(11, _value_info("x", (1, 1, 4, 4)))
             + _field(12, _value_info("y", (1, 1, 4, 4))))
    opset = _field(1, "") + _field(2, 17)
    return (_field(1, 8) + _field(2, "dhserve-doctor") + _field(7, graph) + _field(8, opset))


# -- checks -----------------------------------------------------------------------------------

def installed_distributions() -> dict[str, str]:
    """Distributions that provide the `onnxruntime` module, name → version."""
    found = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def onnxruntime_checks(facts: Facts) -> list[Check]:
    found = installed_distributions()
    listed = ", ".join(f"{n} {v}" for n, v in found.items()) or "none"
    data: dict[str, Any] = {"distributions": found}
    if not found:
        return [Check("onnxruntime", "package", ERROR, "onnxruntime is not installed",
                      "install the package this machine needs: onnxruntime (CPU) or "
                      "onnxruntime-gpu (CUDA), never both",
                      "pip install --no-deps -r requirements.lock", data=data)]
    checks = []
    if len(found) > 1:
        names = " ".join(found)
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else next(iter(found))
        checks.append(Check(
            "onnxruntime", "package", ERROR, f"{listed} installed together",
            "they install the same `onnxruntime` module and overwrite each other's files: "
            "which providers you get depends on which was installed last. Uninstall all, then "
            f"install one ({keep} on a GPU host)",
            f"pip uninstall -y {names} && pip install --no-deps \"{keep}=={found[keep]}\"",
            data=data))
    else:
        checks.append(Check("onnxruntime", "package", OK, f"{listed}", data=data))
    # What asks for CUDA may be the Gunicorn config: it is loaded (and judged for what it
    # imports) before ONNX Runtime is imported here.
    asks = facts.cuda_renderers()
    # Imported only now: after the configuration was judged, and only once a distribution is
    # known to be there (its absence is the finding above, not a failed import)
    import onnxruntime as ort

    from dhserve.runtime.onnx import cuda_major_for_runtime

    compiled = ort.get_available_providers()
    major = cuda_major_for_runtime(ort.__version__)
    checks.append(Check("onnxruntime", "compiled", OK,
                        f"onnxruntime {ort.__version__} compiled with {', '.join(compiled)}",
                        data={"version": ort.__version__, "providers": compiled,
                              "module": ort.__file__}))
    settings = facts.settings
    wants_gpu = bool(asks)
    wants_trt = wants_gpu and settings.gpu_provider == "tensorrt"
    tried = [CPU] + ([CUDA] if CUDA in compiled or wants_gpu else []) \
        + ([TENSORRT] if wants_trt else [])
    device = settings.device if settings.device.startswith("cuda") else "cuda:0"
    running: dict[str, RunningProbe | Check] = {}
    for provider in tried:          # side by side: each is a process of its own
        if provider in compiled:
            request = {"provider": provider, "device": device,
                       "cudnn_conv_algo_search": settings.cudnn_conv_algo_search}
            try:
                running[provider] = start_probe(SESSION_PROBE, request, facts.environ,
                                                PROBE_TIMEOUT_S[provider])
            except OSError as exc:
                running[provider] = failed("onnxruntime", provider, exc)
    for provider in tried:
        requested = asks if {CPU: False, CUDA: wants_gpu, TENSORRT: wants_trt}[provider] else []
        probe = running.get(provider)
        if probe is None:
            checks.append(_not_compiled(provider, requested, compiled, major, ort.__version__))
        elif isinstance(probe, Check):        # it could not even be started
            checks.append(probe)
        else:
            checks.extend(guarded("onnxruntime", partial(
                _provider_lines, provider, probe, requested, compiled, major, ort.__version__,
                facts.variables.get("LD_LIBRARY_PATH")), provider))
    if TENSORRT in compiled and TENSORRT not in tried:
        checks.append(Check("onnxruntime", TENSORRT, OK, "compiled in, not tried "
                            "(DHSERVE_GPU_PROVIDER=tensorrt with a cuda device uses it; its "
                            "engine builds take minutes)", data={"tried": False}))
    return checks


def _asked(requested: list[str]) -> str:
    return (f" {' and '.join(requested)} asks for it" if requested else
            " not asked for (renders run on the CPU)")


def _not_compiled(provider: str, requested: list[str], compiled: list[str], major: int,
                  version: str) -> Check:
    # runtime.onnx imports onnxruntime: only once a distribution is known to be there
    from dhserve.runtime.onnx import install_hint

    return Check("onnxruntime", provider, ERROR if requested else WARNING,
                 f"not usable: {provider} is not compiled into this onnxruntime {version} (it "
                 f"has {', '.join(compiled)});" + _asked(requested),
                 f"this onnxruntime has no {provider}: {install_hint()}",
                 f"pip uninstall -y onnxruntime && pip install "
                 f"\"onnxruntime-gpu[cuda,cudnn]=={version}\"    # with CUDA {major} + cuDNN 9 "
                 "from PyPI", data={"requested": bool(requested), "asked_by": requested,
                                    "compiled": False, "session_providers": [],
                                    "cuda_major": major})


def _provider_lines(provider: str, probe: RunningProbe, requested: list[str],
                    compiled: list[str], major: int, version: str,
                    ld_library_path: str | None) -> list[Check]:
    return [provider_check(provider, finish_probe(probe), requested, compiled, major, version,
                           ld_library_path)]


def provider_check(provider: str, result: ProbeResult, requested: list[str],
                   compiled: list[str], major: int, version: str,
                   ld_library_path: str | None = None) -> Check:
    """The line for one provider from its probe: which providers the session really ran on,
    whether the Conv gave the right answer, and ONNX Runtime's own words when the provider
    was dropped (or the probe's end when it crashed or hung)."""
    answer = result.answer or {}
    in_use = answer.get("session_providers", [])
    result_ok = bool(answer.get("result_ok"))
    error = answer.get("error")
    log = [ANSI.sub("", line) for line in result.log if line.strip()]
    data = {"requested": bool(requested) or provider == CPU, "asked_by": requested,
            "compiled": provider in compiled, "session_providers": in_use,
            "result_ok": result_ok, "ms": answer.get("ms"),
            "probe_seconds": round(result.seconds, 1), "probe_problem": result.problem,
            "log": log[-20:]}
    if result.problem is None and error is None and provider in in_use and result_ok:
        return Check("onnxruntime", provider, OK,
                     f"usable: a session runs on {', '.join(in_use)} and computes right "
                     f"({answer.get('ms', 0):.0f} ms)", data=data)
    if provider == CPU:
        return Check("onnxruntime", provider, ERROR,
                     f"the CPU provider does not work: "
                     f"{result.problem or error or 'wrong result'}",
                     "this onnxruntime is broken (a partial install, a wrong-platform wheel): "
                     "reinstall it", "pip install --force-reinstall --no-deps onnxruntime",
                     data=data)
    reason = failure_reason(log, error)
    data.update(reason=reason, LD_LIBRARY_PATH=ld_library_path, cuda_major=major)
    if result.problem:
        landed = result.problem
    elif provider in in_use:
        landed = (f"a session runs on {', '.join(in_use)} but the Conv "
                  f"{'failed' if error else 'gave a wrong result'}")
    else:
        landed = f"the session landed on {', '.join(in_use)}" if in_use else "no session"
    detail = f"not usable: {landed}"
    if error is not None:
        detail += f" ({error[:300]})"
    detail += f"; {reason['summary']} (onnxruntime-gpu {version} needs CUDA {major} and cuDNN 9)"
    remedy, fix = _remedy(provider, reason, major, version, crashed=result.problem is not None)
    return Check("onnxruntime", provider, ERROR if requested else WARNING,
                 detail + ";" + _asked(requested), remedy, fix, data=data)


def failure_reason(log: list[str], error: str | None = None) -> dict[str, Any]:
    """What ONNX Runtime said about a provider it dropped: the library that failed to load,
    the CUDA/cuDNN it requires, a known CUDA failure; `summary` says it in one phrase."""
    text = "\n".join(log) + ("\n" + error if error else "")
    libraries = []
    for match in MISSING_LIBRARY.finditer(text):
        name = match.group(1) or match.group(2)
        if name and name not in libraries:
            libraries.append(name)
    # "Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: …":
    # the provider's own library is the carrier, the one after it is the missing one
    missing = [lib for lib in libraries if "onnxruntime_providers" not in lib] or libraries
    requires = REQUIRES.search(text)
    known = next((advice for pattern, advice in KNOWN_FAILURES if pattern.search(text)), None)
    not_compiled = re.search(r"Specified provider '(\w+)' is not in available provider", text)
    if missing:
        summary = f"ONNX Runtime could not load {', '.join(missing)}"
    elif not_compiled:
        summary = f"{not_compiled.group(1)} is not compiled into this onnxruntime"
    elif known:
        summary = known.split(":")[0]
    elif requires:
        summary = f"ONNX Runtime requires {requires.group(1)} and {requires.group(2)}"
    else:
        lines = [line for line in log if re.search(r"\[E:|\[W:|error|fail", line, re.IGNORECASE)]
        summary = (f"ONNX Runtime said: {lines[-1].strip()[:300]}" if lines else
                   "ONNX Runtime gave no reason")
    return {"summary": summary, "missing_libraries": missing,
            "requires": list(requires.groups()) if requires else None, "advice": known,
            "not_compiled": bool(not_compiled)}


def _remedy(provider: str, reason: dict[str, Any], major: int, version: str,
            crashed: bool = False) -> tuple[str, str]:
    gpu_wheel = f"onnxruntime-gpu[cuda,cudnn]=={version}"
    missing = reason["missing_libraries"]
    if reason["advice"]:
        return reason["advice"], "nvidia-smi"
    if any("libcuda.so" in lib or "nvcuda" in lib for lib in missing):
        return (("the NVIDIA driver's libcuda is not loadable: install the driver; in Docker "
                "start the container with `--gpus all` (NVIDIA Container Toolkit)"),
                "nvidia-smi\nldconfig -p | grep libcuda")
    cuda_missing = [lib for lib in missing if CUDA_LIBRARIES.search(lib)]
    if not cuda_missing and (any("nvinfer" in lib for lib in missing)
                             or (provider == TENSORRT and not crashed)):
        return ((f"TensorRT 10 for CUDA {major} is missing: install it (pip install "
                f"tensorrt-cu{major}-libs), or use the CUDA provider (DHSERVE_GPU_PROVIDER=cuda)"),
                f"pip install tensorrt-cu{major}-libs\nexport DHSERVE_GPU_PROVIDER=cuda")
    if crashed and not missing:
        return (("the probe crashed or hung inside ONNX Runtime, CUDA, cuDNN or TensorRT: its last "
                 "log lines are in --json (data.log); check the driver with `nvidia-smi`, that "
                 f"CUDA {major} and cuDNN 9 libraries match this onnxruntime-gpu {version}, and "
                 "`dmesg` for Xid errors; until then serve on the CPU (DHSERVE_DEVICE=cpu)"),
                "nvidia-smi\ndmesg | grep -i xid")
    return ((f"onnxruntime-gpu {version} needs CUDA {major} and cuDNN 9 libraries it can load "
            f"({' '.join(missing) or 'see the log in --json'}): install them from PyPI with "
            f"`pip install \"{gpu_wheel}\"` (dhserve preloads them), or put a CUDA {major} "
            "toolkit and cuDNN 9 on LD_LIBRARY_PATH; importing a torch built for CUDA "
            f"{major} first also works"),
            (f"pip install \"{gpu_wheel}\"\nldconfig -p | grep -E 'libcudnn|libcublasLt'\n"
            f"python -c 'import onnxruntime as o; o.preload_dlls(); "
            f"print(o.get_available_providers())'"))


# -- inside the probe's child process ---------------------------------------------------------

def session_probe(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: a session of the tiny Conv model on `request["provider"]` (with the CPU
    after it, as dhserve makes them, through runtime.onnx): the providers it really runs on,
    and whether it computes right. TensorRT engines built for it go to a temporary folder,
    deleted after."""
    # What may crash, hang or make a CUDA context is imported here, in the child only
    import numpy as np
    import onnxruntime as ort

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
            answer["error"] = said(exc).removesuffix("; " + runtime.install_hint())
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
            answer["error"] = said(exc)
    answer["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return answer
