"""The doctor's checks, one function per group; each returns typed `Check` results.

A check never raises: what goes wrong while checking (a library that cannot be imported, a
driver that answers garbage) becomes an error line naming the exception, and the other checks
still run. Remedies say what to set or run for this project, not what went wrong in general.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhserve.config import ServingSettings, Settings
from dhserve.errors import first_line

OK, WARNING, ERROR = "ok", "warning", "error"
SEVERITY = {OK: 0, WARNING: 1, ERROR: 2}
GIB = 2**30
MIB = 2**20
DISK_WARN_BYTES = 5 * GIB          # a few hours of 1080p results, the template cache, logs
DISK_ERROR_BYTES = 500 * MIB       # one render's output and its temporary file may not fit
RAM_WARN_BYTES = 2 * GIB           # MediaPipe + ONNX Runtime + frame cache of one render
GPU_FREE_WARN_MB = 2048            # CUDA context (~0.5 GB) + models + cuDNN workspace
SUPPORTED_PYTHON = ((3, 10), (3, 12))   # mediapipe 0.10.21 wheels exist for these
TORCH_PROBE_TIMEOUT_S = 120.0      # importing torch with its CUDA libraries takes seconds
# The PyTorch wheel index for a CUDA major (the one onnxruntime-gpu needs, so both load the
# same CUDA libraries)
TORCH_INDEX = {12: "cu126", 13: "cu130"}


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, what to do about it."""

    group: str                 # system, gpu, onnxruntime, pytorch, gunicorn, models, media,
                               # storage, network
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

    `gpu` may be given as data (an NVML summary, as tests and pure decisions do); `load_config`
    returns a doctor.gunicorn.LoadedConfig (none: no configuration, no plan)."""

    def __init__(self, settings: Settings, serving: ServingSettings | None,
                 variables: dict[str, str | None], gpu: dict[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None,
                 load_config: Callable[[Facts], Any] | None = None):
        self.settings = settings
        self.serving = serving
        self.variables = variables
        self.environ = dict(os.environ if environ is None else environ)
        self._gpu = gpu
        self._load_config = load_config
        self._config: Any = None
        self._config_loaded = load_config is None

    @property
    def gpu(self) -> dict[str, Any]:
        if self._gpu is None:
            self._gpu = read_gpus()
        return self._gpu

    @property
    def config(self) -> Any:
        """The Gunicorn configuration, loaded the first time a check asks."""
        if not self._config_loaded:
            self._config_loaded = True
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

    def cuda_renderers(self) -> list[str]:
        """What makes renders run on CUDA here: DHSERVE_DEVICE, or a serving plan that puts
        renderers on GPUs (each then runs with DHSERVE_DEVICE=cuda:0, pinned to its GPU)."""
        asks = []
        if self.settings.device.startswith("cuda"):
            asks.append(f"DHSERVE_DEVICE={self.settings.device}")
        if self.plan is not None and any(d.gpu is not None for d in self.plan.devices):
            asks.append("the serving plan (renderers on "
                        + ", ".join(d.label for d in self.plan.devices) + ")")
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
        if self.plan is not None and any(d.gpu is not None for d in self.plan.devices):
            asks.append("the Gunicorn config's plan (renders on "
                        + ", ".join(d.label for d in self.plan.devices) + ")")
        return asks


def guarded(group: str, run: Callable[[], list[Check]], name: str = "check") -> list[Check]:
    """The checks `run` makes; a failure of the checking itself is one error line `name`,
    not a crash."""
    try:
        return run()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the doctor must survive anything
        return [failed(group, name, exc)]


def read_gpus() -> dict[str, Any]:
    """NVML's summary (runtime.gpu); a failure beyond NVML's own errors (which it reports as
    `reason`) is kept as `error` for the gpu group to report, never raised."""
    try:
        from dhserve.runtime.gpu import gpu_summary

        return gpu_summary()
    except Exception as exc:  # noqa: BLE001 - a broken driver or pynvml must not end the run
        said = f"{type(exc).__name__}: {first_line(exc)}"
        return {"available": False, "reason": f"NVML failed ({said})", "error": said}


def failed(group: str, name: str, exc: BaseException) -> Check:
    return Check(group, name, ERROR,
                 f"the check itself failed: {type(exc).__name__}: {first_line(exc)}",
                 "this environment breaks something dhserve needs; the exception names it "
                 "(rerun with `dhserve -v doctor` for the library's own messages)",
                 data={"exception": type(exc).__name__, "message": str(exc)[:2000]})


# -- system -----------------------------------------------------------------------------------

def existing_parent(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (for free disk before the dir is made)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def system_checks(facts: Facts) -> list[Check]:
    checks = []
    version = sys.version_info[:2]
    low, high = SUPPORTED_PYTHON
    text = f"Python {platform.python_version()} ({sys.executable})"
    if low <= version <= high:
        checks.append(Check("system", "python", OK, text,
                            data={"version": platform.python_version()}))
    else:
        checks.append(Check(
            "system", "python", WARNING, f"{text}: outside the supported 3.10–3.12",
            "mediapipe 0.10.21 (face analysis) ships wheels for Python 3.10–3.12 only; make the "
            "venv with one of them", "python3.11 -m venv .venv && ./dev setup",
            data={"version": platform.python_version()}))
    os_text = f"{platform.system()} {platform.release()} ({platform.machine()})"
    if sys.platform == "win32":
        checks.append(Check("system", "os", WARNING, f"{os_text}: Gunicorn does not run here",
                            "dhserve serve falls back to Flask's threaded server on Windows; "
                            "use Linux (or WSL2) for production serving",
                            data={"platform": platform.platform()}))
    else:
        checks.append(Check("system", "os", OK, os_text, data={"platform": platform.platform()}))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    checks.append(Check("system", "cpus", OK,
                        f"{os.cpu_count()} CPUs, {usable} usable by this process",
                        data={"count": os.cpu_count(), "usable": usable}))
    checks.extend(guarded("system", _memory, "memory"))
    checks.extend(guarded("system", lambda: [_disk(facts.settings.data_dir)], "disk"))
    return checks


def _memory() -> list[Check]:
    import psutil

    memory = psutil.virtual_memory()
    mem_text = (f"{memory.total / GIB:.1f} GiB RAM, {memory.available / GIB:.1f} GiB "
                "available")
    mem_data = {"total_bytes": memory.total, "available_bytes": memory.available}
    if memory.available < RAM_WARN_BYTES:
        return [Check("system", "memory", WARNING, mem_text,
                      "a render needs about 1–2 GiB (MediaPipe, ONNX Runtime, the frame "
                      "cache); free memory, or lower DHSERVE_FRAME_CACHE_MB and "
                      "GUNICORN_MAX_MEMORY so workers recycle before the OOM killer "
                      "strikes", data=mem_data)]
    return [Check("system", "memory", OK, mem_text, data=mem_data)]


def _disk(data_dir: Path) -> Check:
    where = existing_parent(data_dir)
    usage = shutil.disk_usage(where)
    disk_text = (f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB at "
                 f"{where} (data dir {data_dir.absolute()})")
    disk_data = {"path": str(where), "free_bytes": usage.free, "total_bytes": usage.total}
    if usage.free < DISK_WARN_BYTES:
        return Check(
            "system", "disk", ERROR if usage.free < DISK_ERROR_BYTES else WARNING, disk_text,
            "results, uploads and the template cache live in the data dir; free space there, "
            "lower DHSERVE_RETENTION_DAYS (finished jobs and their files are deleted after it) "
            "or point DHSERVE_DATA_DIR at a larger disk",
            f"du -sh {data_dir}/* ; export DHSERVE_RETENTION_DAYS=2", data=disk_data)
    return Check("system", "disk", OK, disk_text, data=disk_data)


# -- GPU --------------------------------------------------------------------------------------

def _index_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def gpu_checks(facts: Facts) -> list[Check]:
    gpu, variables = facts.gpu, facts.variables
    asks = facts.gpu_requests()
    devices = gpu.get("devices", []) if gpu.get("available") else []
    checks = []
    if "error" in gpu:
        checks.append(Check("gpu", "nvml", ERROR, f"reading the GPUs failed: {gpu['error']}",
                            "NVML (the driver's management library) or nvidia-ml-py is broken "
                            "here: `nvidia-smi` shows whether the driver answers; reinstall "
                            "the driver, or nvidia-ml-py from requirements.lock",
                            "nvidia-smi", data={"nvml": gpu}))
    if not devices:
        reason = gpu.get("reason", "NVML sees no device")
        if asks:
            checks.append(Check(
                "gpu", "devices", ERROR,
                f"no GPU ({reason}), but {' and '.join(asks)} asks for one",
                "make the GPU visible: install the NVIDIA driver and check `nvidia-smi`; in "
                "Docker start the container with `--gpus all` (NVIDIA Container Toolkit); or "
                "serve on the CPU: DHSERVE_DEVICE=cpu, DHSERVE_GPUS=auto or none, "
                "DHSERVE_PROFILE=auto",
                "nvidia-smi\ndocker run --gpus all ...\nexport DHSERVE_DEVICE=cpu "
                "DHSERVE_GPUS=none DHSERVE_PROFILE=auto", data={"nvml": gpu, "asked_by": asks}))
        else:
            checks.append(Check("gpu", "devices", OK,
                                f"no GPU ({reason}): CPU mode, renders run on the CPU",
                                data={"nvml": gpu}))
    for device in devices:
        free = device["memory_total_mb"] - device["memory_used_mb"]
        text = (f"GPU {device['index']}: {device['name']}, "
                f"{device['memory_total_mb'] / 1024:.1f} GiB, "
                f"{device['memory_used_mb'] / 1024:.1f} GiB used (driver {gpu['driver']})")
        data = {**device, "driver": gpu["driver"]}
        if free < GPU_FREE_WARN_MB:
            checks.append(Check(
                "gpu", f"device {device['index']}", WARNING, f"{text}: {free:.0f} MiB free",
                "another process holds this GPU's memory (see `nvidia-smi`); a renderer needs "
                "~2 GiB (CUDA context, models, cuDNN workspace): stop it, or choose another GPU "
                "with DHSERVE_GPUS", "nvidia-smi --query-compute-apps=pid,used_memory "
                "--format=csv", data=data))
        else:
            checks.append(Check("gpu", f"device {device['index']}", OK, text, data=data))
    checks.append(_visibility(variables, devices, asks))
    alloc = variables.get("PYTORCH_CUDA_ALLOC_CONF")
    checks.append(Check(
        "gpu", "pytorch alloc conf", OK,
        f"PYTORCH_CUDA_ALLOC_CONF={alloc}" if alloc else
        "PYTORCH_CUDA_ALLOC_CONF unset (PyTorch's default caching allocator; dhserve renders "
        "with ONNX Runtime, which does not read it)", data={"value": alloc}))
    return checks


def _visibility(variables: dict[str, str | None], devices: list[dict[str, Any]],
                asks: list[str]) -> Check:
    """CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES against the GPUs NVML sees (NVML
    ignores CUDA_VISIBLE_DEVICES; CUDA honours it; the container runtime decides what NVML
    can see from NVIDIA_VISIBLE_DEVICES)."""
    cuda = variables.get("CUDA_VISIBLE_DEVICES")
    nvidia = variables.get("NVIDIA_VISIBLE_DEVICES")
    order = variables.get("CUDA_DEVICE_ORDER")
    data = {"CUDA_VISIBLE_DEVICES": cuda, "NVIDIA_VISIBLE_DEVICES": nvidia,
            "CUDA_DEVICE_ORDER": order, "nvml_indices": [d["index"] for d in devices]}
    shown = f"CUDA_VISIBLE_DEVICES={'unset' if cuda is None else repr(cuda)}, " \
            f"NVIDIA_VISIBLE_DEVICES={'unset' if nvidia is None else repr(nvidia)}"
    if cuda is not None:
        from dhserve.serving.plan import ServingConfigError, visible_indices

        try:
            entries = visible_indices(cuda)
        except ServingConfigError as exc:     # `dhserve serve` refuses it with this message
            return Check("gpu", "visibility", ERROR,
                         f"{shown}: not a list of GPU indices (a UUID or MIG id?)",
                         exc.message, "unset CUDA_VISIBLE_DEVICES; export DHSERVE_GPUS=0",
                         data=data)
        missing = [e for e in entries if e >= len(devices)]
        if missing:
            return Check("gpu", "visibility", ERROR,
                         f"{shown}: NVML sees {len(devices)} GPU(s), so GPU {missing[0]} does "
                         "not exist (CUDA ignores every index after the first invalid one)",
                         "set CUDA_VISIBLE_DEVICES to indices `nvidia-smi -L` lists, or unset "
                         "it and choose with DHSERVE_GPUS", "nvidia-smi -L", data=data)
        if not entries and asks:
            return Check("gpu", "visibility", ERROR,
                         f"{shown}: hides every GPU from CUDA, but {' and '.join(asks)} asks "
                         "for one", "unset CUDA_VISIBLE_DEVICES (dhserve pins each renderer "
                         "to its GPU itself)", "unset CUDA_VISIBLE_DEVICES", data=data)
        if len(entries) > 1 and order != "PCI_BUS_ID":
            return Check("gpu", "visibility", WARNING,
                         f"{shown}: CUDA_DEVICE_ORDER is {order or 'unset'}",
                         "CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, "
                         "NVML and nvidia-smi by PCI bus: index N may be another GPU in each. "
                         "Set CUDA_DEVICE_ORDER=PCI_BUS_ID (dhserve's renderers do)",
                         "export CUDA_DEVICE_ORDER=PCI_BUS_ID", data=data)
    if nvidia is not None and nvidia.strip().lower() not in ("void", "none", ""):
        if not devices:
            status = ERROR if asks else OK
            return Check("gpu", "visibility", status,
                         f"{shown}: the image expects GPUs, but none is mounted in this "
                         "container" + ("" if asks else " (fine for CPU mode)"),
                         "start the container with the NVIDIA runtime: `docker run --gpus all` "
                         "or `deploy.resources.reservations.devices` (driver: nvidia) in "
                         "compose" if asks else "", "docker run --gpus all ..." if asks else "",
                         data=data)
        wanted = _index_list(nvidia)
        if nvidia.strip().lower() != "all" and len(wanted) != len(devices):
            return Check("gpu", "visibility", WARNING,
                         f"{shown}: names {len(wanted)} GPU(s) but NVML sees {len(devices)}",
                         "outside a container NVIDIA_VISIBLE_DEVICES does nothing; inside one, "
                         "the runtime mounts exactly these GPUs: check the container's "
                         "--gpus / NVIDIA_VISIBLE_DEVICES against `nvidia-smi -L`",
                         "nvidia-smi -L", data=data)
    if cuda is not None and not cuda.strip():
        return Check("gpu", "visibility", OK, f"{shown}: every GPU hidden from CUDA (CPU mode)",
                     data=data)
    return Check("gpu", "visibility", OK,
                 f"{shown}: consistent with the {len(devices)} GPU(s) NVML sees", data=data)


# -- PyTorch ----------------------------------------------------------------------------------

def pytorch_checks(facts: Facts, onnxruntime_cuda_major: int | None = None,
                   wheel_cuda_major: int = 12) -> list[Check]:
    """Only where torch is installed. torch is asked about CUDA in a child process with the
    environment the doctor was started with (doctor.probes): whether that initialised CUDA is
    what a forking server would meet. `onnxruntime_cuda_major`: the CUDA major onnxruntime-gpu
    needs (None: not installed); `wheel_cuda_major`: the one to suggest for torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return [Check("pytorch", "torch", OK, "not installed (dhserve renders with ONNX "
                      "Runtime; PyTorch is optional)", data={"installed": False})]
    from dhserve.doctor import probes

    result = probes.run(["torch"], facts.environ, TORCH_PROBE_TIMEOUT_S)
    answer = result.answer or {}
    if result.problem or "error" in answer:
        said = result.problem or answer["error"]
        return [Check("pytorch", "torch", ERROR, f"torch is installed but asking it about CUDA "
                      f"failed: {said}", "a broken or mismatched torch install (its own log is "
                      "in --json, data.log): reinstall it, or uninstall it (dhserve does not "
                      "need it)", "pip uninstall -y torch",
                      data={"installed": True, "problem": said, "log": result.log[-20:]})]
    return pytorch_verdict(facts, answer, onnxruntime_cuda_major, wheel_cuda_major)


def pytorch_verdict(facts: Facts, torch: dict[str, Any], onnxruntime_cuda_major: int | None,
                    wheel_cuda_major: int = 12) -> list[Check]:
    """The pytorch lines from what the probe found (`torch`: version, cuda_build,
    cuda_available, device_count, cuda_initialised), the GPUs NVML sees and the variables."""
    nvml_check = facts.variables.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    cuda_build = torch.get("cuda_build")
    available, count = torch.get("cuda_available"), torch.get("device_count", 0)
    data = {"installed": True, **torch, "PYTORCH_NVML_BASED_CUDA_CHECK": nvml_check}
    text = (f"torch {torch.get('version')}, " + (f"CUDA {cuda_build} build" if cuda_build
                                                 else "CPU-only build")
            + f", CUDA available: {available}, {count} device(s)")
    checks = []
    gpus = facts.gpu.get("devices", []) if facts.gpu.get("available") else []
    index = TORCH_INDEX.get(wheel_cuda_major, f"cu{wheel_cuda_major}0")
    if cuda_build is None and gpus:
        checks.append(Check("pytorch", "torch", WARNING, text,
                            "this machine has a GPU but torch is the CPU build; if anything "
                            "here uses torch on the GPU, install the CUDA build for the CUDA "
                            f"major onnxruntime-gpu uses ({wheel_cuda_major})",
                            f"pip install torch --index-url https://download.pytorch.org/whl/"
                            f"{index}", data=data))
    elif gpus and not available:
        checks.append(Check("pytorch", "torch", WARNING, text,
                            "torch does not see the GPUs NVML sees: check "
                            "CUDA_VISIBLE_DEVICES and that torch's CUDA build fits the driver "
                            "(`nvidia-smi` shows the highest CUDA the driver supports)",
                            data=data))
    else:
        checks.append(Check("pytorch", "torch", OK, text, data=data))
    if cuda_build and onnxruntime_cuda_major is not None \
            and int(cuda_build.split(".")[0]) != onnxruntime_cuda_major:
        checks.append(Check(
            "pytorch", "cuda major", WARNING,
            f"torch is built for CUDA {cuda_build}, onnxruntime-gpu needs CUDA "
            f"{onnxruntime_cuda_major}",
            "importing torch first loads its CUDA libraries, and ONNX Runtime's CUDA provider "
            "then fails to load its own major; use an onnxruntime-gpu and a torch built for the "
            "same CUDA major", f"pip install torch --index-url "
            f"https://download.pytorch.org/whl/{index}",
            data={"torch": cuda_build, "onnxruntime": onnxruntime_cuda_major}))
    evidence = torch.get("cuda_initialised")
    where = ("the Gunicorn master, app_production.py, anything that asks "
             "torch.cuda.is_available() and then forks workers")
    if nvml_check != "1":
        shown = "unset" if nvml_check is None else f"{nvml_check!r}"
        checks.append(Check(
            "pytorch", "fork safety", WARNING,
            f"PYTORCH_NVML_BASED_CUDA_CHECK is {shown}: torch.cuda.is_available() initialises "
            "CUDA in the process that asks" + (f" (it did here: {evidence})" if evidence else ""),
            f"export PYTORCH_NVML_BASED_CUDA_CHECK=1 (PyTorch >= 2.0) wherever a process asks "
            f"torch about CUDA and then forks: {where}; workers forked from it inherit a CUDA "
            "they cannot use (\"Cannot re-initialize CUDA in forked subprocess\"). dhserve's "
            "own Gunicorn hooks set it for the master they run in",
            "export PYTORCH_NVML_BASED_CUDA_CHECK=1", data=data))
    elif evidence:
        checks.append(Check(
            "pytorch", "fork safety", ERROR,
            f"with PYTORCH_NVML_BASED_CUDA_CHECK=1, asking torch about CUDA still initialised "
            f"CUDA ({evidence})",
            "this torch ignores the variable (it needs PyTorch >= 2.0): upgrade torch, or ask "
            f"NVML (nvidia-ml-py) instead of torch in {where}",
            f"pip install \"torch>=2.0\" --index-url https://download.pytorch.org/whl/{index}",
            data=data))
    else:
        checks.append(Check("pytorch", "fork safety", OK,
                            "PYTORCH_NVML_BASED_CUDA_CHECK=1: asking torch about CUDA does not "
                            "initialise it", data=data))
    return checks


# -- models -----------------------------------------------------------------------------------

def model_checks(facts: Facts) -> list[Check]:
    from dataclasses import fields as dataclass_fields

    from dhserve.engine.lipsync.base import resolve_backend
    from dhserve.runtime.models import model_statuses

    settings = facts.settings
    defaults = {f.name: f.default for f in dataclass_fields(Settings)}
    backend = resolve_backend(settings.backend, settings)
    checks = []
    for status in model_statuses(settings, checksum=True):
        setting = f"DHSERVE_{status.setting.upper()}"
        name = f"{status.kind}"
        data = {"path": str(status.path), "present": status.present, "size": status.size,
                "sha256": status.sha256, "valid": status.valid, "batch": status.batch,
                "dtype": status.dtype, "tensors": status.tensors, "code": status.code}
        if not status.present:
            needed = (status.kind == backend or
                      getattr(settings, status.setting) != defaults[status.setting])
            why = (f"DHSERVE_BACKEND={settings.backend} needs it" if status.kind == backend
                   else f"{setting} names it")
            if needed:
                checks.append(Check(
                    "models", name, ERROR, f"{status.path}: absent, but {why}",
                    f"put the file into {settings.models_path} (or set DHSERVE_MODELS_DIR / "
                    f"{setting} to where it is); no weights ship with dhserve and nothing is "
                    "downloaded", f"cp /path/to/{status.name} {settings.models_path}/ && "
                    "dhserve models", data=data))
            else:
                use = ("the classic backend is used" if status.kind == "wav2lip" else
                       "jobs asking for face restoration (chaofen=1) are refused with "
                       "model.missing")
                checks.append(Check("models", name, OK,
                                    f"{status.path.name}: absent (optional: {use})", data=data))
            continue
        size = f"{status.size / MIB:.1f} MiB, sha256 {status.sha256}"
        if status.valid:
            batch = "dynamic batch" if status.batch is None else f"batch {status.batch}"
            checks.append(Check("models", name, OK,
                                f"{status.path}: loads, {status.tensors} ({status.dtype}, "
                                f"{batch}), {size}", data=data))
        elif status.code == "model.bad_signature":
            checks.append(Check(
                "models", name, ERROR, f"{status.problem} ({size})",
                f"this file is not the {status.kind} model dhserve expects; use a file with "
                "that signature (FaceFusion's wav2lip_gan_96.onnx / GFPGANv1.4.onnx fit) or "
                f"point {setting} at the right file", data=data))
        else:
            checks.append(Check(
                "models", name, ERROR, f"{status.problem} ({size})",
                "the file is damaged or not ONNX (a truncated download, an HTML error page, a "
                "Git LFS pointer): copy it again and compare its sha256 with the source's",
                f"sha256sum {status.path}; head -c 200 {status.path}", data=data))
    return checks


# -- media ------------------------------------------------------------------------------------

REQUIRED_ENCODERS = ("libx264", "aac")


def media_checks(facts: Facts, encoders: tuple[str, ...] = REQUIRED_ENCODERS) -> list[Check]:
    """The encoders dhserve writes with, present and working (a real 2-frame MP4 in memory);
    NVENC shown where this FFmpeg has it (dhserve does not need it)."""
    import av

    versions = getattr(av, "library_versions", {})
    checks = [Check("media", "pyav", OK,
                    f"PyAV {av.__version__}, libavcodec "
                    f"{'.'.join(map(str, versions.get('libavcodec', ())))}",
                    data={"pyav": av.__version__,
                          "libraries": {k: list(v) for k, v in versions.items()}})]
    for name in encoders:
        try:
            codec = av.codec.Codec(name, "w")
        except Exception as exc:  # noqa: BLE001 - UnknownCodecError and kin
            checks.append(Check("media", name, ERROR,
                                f"encoder {name} missing from this FFmpeg ({first_line(exc)})",
                                "dhserve writes H.264 with libx264 and AAC; PyAV's wheels have "
                                "both: reinstall PyAV from the wheel (a PyAV built against a "
                                "system FFmpeg without them will not do)",
                                "pip install --force-reinstall --no-deps --only-binary=:all: "
                                "\"av<19\"", data={"codec": name}))
            continue
        checks.append(Check("media", name, OK, f"encoder {name} ({codec.long_name})",
                            data={"codec": name}))
    if all(c.status == OK for c in checks):
        checks.extend(guarded("media", _encode, "encode"))
    checks.extend(guarded("media", lambda: [_nvenc(facts)], "h264_nvenc"))
    return checks


def _encode() -> list[Check]:
    """A real 2-frame H.264 + AAC MP4, written in memory."""
    import io

    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 80 * i, np.uint8),
                                               format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    return [Check("media", "encode", OK,
                  f"libx264 + aac wrote a {len(buffer.getvalue())}-byte MP4",
                  data={"bytes": len(buffer.getvalue())})]


def _nvenc(facts: Facts) -> Check:
    import av

    try:
        av.codec.Codec("h264_nvenc", "w")
        nvenc = "compiled into this FFmpeg"
    except Exception:  # noqa: BLE001 - UnknownCodecError and kin
        nvenc = "not in this FFmpeg"
    gpus = facts.gpu.get("available")
    return Check("media", "h264_nvenc", OK,
                 f"h264_nvenc {nvenc}" + ("" if gpus else "; no GPU, so not usable") +
                 " (dhserve encodes with libx264 either way)", data={"nvenc": nvenc})


# -- storage and queue ------------------------------------------------------------------------

def storage_checks(facts: Facts) -> list[Check]:
    settings = facts.settings
    checks = guarded("storage", lambda: [_data_dir(settings.data_dir)], "data dir")
    checks.extend(guarded("storage", lambda: _database(settings), "database"))
    return checks


def _data_dir(data_dir: Path) -> Check:
    from dhserve.fsutil import unwritable_reason

    where = data_dir.absolute()
    data = {"path": str(where)}
    created = not where.exists()
    exc = unwritable_reason(where)          # what `dhserve serve` does first
    if exc is not None:
        return Check("storage", "data dir", ERROR,
                     f"{where}: not writable ({type(exc).__name__}: {exc.strerror or exc})",
                     "dhserve writes uploads, results, the template cache, the SQLite store and "
                     "its log there: point DHSERVE_DATA_DIR (or --data-dir) at a writable "
                     "folder, or fix its owner / mount (a read-only volume, a path through a "
                     "regular file)", f"mkdir -p {where} && touch {where}/probe && rm "
                     f"{where}/probe\nexport DHSERVE_DATA_DIR=/srv/dhserve", data=data)
    return Check("storage", "data dir", OK,
                 f"{where}: writable" + (" (created now)" if created else ""), data=data)


def _database(settings: Settings) -> list[Check]:
    import sqlalchemy as sa

    from dhserve.jobs import migrate
    from dhserve.jobs.store import create_engine

    url = settings.database
    engine_url = sa.engine.make_url(url)
    shown = engine_url.render_as_string(hide_password=True)
    data: dict[str, Any] = {"url": shown, "dialect": engine_url.get_backend_name()}
    if engine_url.get_backend_name() == "sqlite":
        path = Path(engine_url.database or "")
        if not path.is_file():
            return [Check("storage", "database", OK,
                          f"{shown}: not created yet (the first `dhserve serve` or `dhserve "
                          "worker` creates it)", data=data)]
    engine = create_engine(url)               # as the service makes it (postgresql:// too)
    try:
        with engine.connect() as conn:
            current = migrate.current(conn)
    except sa.exc.DBAPIError as exc:
        return [Check("storage", "database", ERROR,
                      f"{shown}: unreachable ({first_line(exc.orig)})",
                      "start the database or fix DHSERVE_DATABASE_URL "
                      "(postgresql+psycopg://user:password@host:5432/db, or unset it for SQLite "
                      "in the data dir); every worker and the web tier need it",
                      f"pg_isready -h {engine_url.host or '127.0.0.1'} -p "
                      f"{engine_url.port or 5432}" if data["dialect"] == "postgresql"
                      else f"ls -l {engine_url.database}",
                      data=data)]
    finally:
        engine.dispose()
    known = migrate.revisions()               # oldest first, linear: the last is the head
    head = known[-1]
    data.update(schema=current, head=head)
    checks = [Check("storage", "database", OK, f"{shown}: reachable", data=data)]
    if current is None:
        checks.append(Check("storage", "schema", OK, "no dhserve tables yet (created on the "
                            "first start of `dhserve serve` or `dhserve worker`)", data=data))
        return checks
    if current not in known:
        checks.append(Check("storage", "schema", ERROR,
                            f"schema revision {current} is newer than this dhserve knows "
                            f"(head {head})",
                            "a newer dhserve migrated this database: upgrade dhserve here "
                            "(every machine sharing the database must run the same version)",
                            data=data))
        return checks
    if current != head:
        checks.append(Check("storage", "schema", WARNING,
                            f"schema revision {current}, this dhserve's is {head}",
                            "the schema is migrated on the next start of `dhserve serve` or "
                            "`dhserve worker`; stop older workers sharing it first",
                            data=data))
        return checks
    checks.append(Check("storage", "schema", OK, f"up to date (revision {head})", data=data))
    checks.extend(_queue(settings, url))
    return checks


def _queue(settings: Settings, url: str) -> list[Check]:
    from dhserve.jobs import JobStore
    from dhserve.jobs.model import JobState

    store = JobStore(url, upgrade=False)
    try:
        counts = store.counts()
        registered = store.workers()
        held = {job.worker_id: job.id for job in store.list(JobState.RUNNING, limit=10_000)
                if job.worker_id}
        now = store.now()
    finally:
        store.close()
    depth, running = counts[JobState.QUEUED], counts[JobState.RUNNING]
    data = {"depth": depth, "running": running, "max_queued": settings.max_queued,
            "jobs": {state.value: n for state, n in counts.items()}}
    if depth >= settings.max_queued:
        queue = Check("storage", "queue", WARNING,
                      f"{depth} queued (the limit, DHSERVE_MAX_QUEUED={settings.max_queued}), "
                      f"{running} running: submits are answered busy",
                      "add render workers (`dhserve worker` on another GPU or machine) or raise "
                      "DHSERVE_MAX_QUEUED", data=data)
    else:
        queue = Check("storage", "queue", OK, f"{depth} queued, {running} running", data=data)
    alive, silent = [], []
    for w in registered:
        age = max(now - w.heartbeat_at, 0.0)
        (alive if age <= settings.lease_seconds else silent).append((w, age))
    workers = [{"id": w.id, "host": w.host, "pid": w.pid, "device": w.device, "state": w.state,
                "job": w.job_id, "ready": w.ready, "heartbeat_age_seconds": round(age, 1),
                "alive": age <= settings.lease_seconds}
               for w, age in [*alive, *silent]]
    listing = "; ".join(f"{w.id} on {w.device} {w.state}, heartbeat {age:.0f} s ago"
                        for w, age in [*alive, *silent])
    data = {"workers": workers, "lease_seconds": settings.lease_seconds}
    stuck = [(w, held[w.id]) for w, _ in silent if w.id in held]
    gone = (f"; {len(silent)} silent for longer than the lease ({settings.lease_seconds:g} s): "
            "gone workers' rows, harmless, removed with old jobs" if silent else "")
    if stuck:
        worker = Check("storage", "workers", WARNING,
                       f"{len(stuck)} silent worker(s) hold a running job ("
                       + ", ".join(f"{job} on {w.id}" for w, job in stuck)
                       + f"): {listing}",
                       "a silent worker crashed or lost its machine; its job is requeued when "
                       "the lease expires (DHSERVE_LEASE_SECONDS) and another worker renders "
                       "it. Look at <data dir>/log/dh.log on its host", data=data)
    elif depth and not alive:
        worker = Check("storage", "workers", WARNING,
                       f"{depth} job(s) wait and no render worker heartbeats",
                       "start the service (`dhserve serve`) or a render worker "
                       "(`dhserve worker`) against this database", "dhserve worker", data=data)
    elif alive:
        worker = Check("storage", "workers", OK, f"{len(alive)} alive{gone}: {listing}",
                       data=data)
    elif silent:
        worker = Check("storage", "workers", OK,
                       f"none alive (none needed while nothing waits){gone}: {listing}",
                       data=data)
    else:
        worker = Check("storage", "workers", OK,
                       "no render worker registered (none needed while nothing waits)",
                       data=data)
    return [queue, worker]


# -- network ----------------------------------------------------------------------------------

def network_checks(facts: Facts) -> list[Check]:
    from dhserve.serving.plan import exposed_without_key

    binds = facts.binds
    checks = []
    for bind in binds:
        suffix = f" {bind}" if len(binds) > 1 else ""
        checks.extend(guarded("network", lambda b=bind, n="port" + suffix: [_port(b, n)],
                              "port" + suffix))
        if exposed_without_key(facts.settings, bind):
            checks.append(Check("network", "exposure" + suffix, WARNING,
                                f"{bind} is reachable beyond this machine and DHSERVE_API_KEY "
                                "is not set: anyone who reaches the port can submit jobs",
                                "set DHSERVE_API_KEY (clients send Authorization: Bearer "
                                "<key>), or bind 127.0.0.1 behind a reverse proxy",
                                "export DHSERVE_API_KEY=$(python3 -c 'import secrets; "
                                "print(secrets.token_urlsafe(32))')",
                                data={"bind": bind, "api_key": False}))
        else:
            why = ("API key set" if facts.settings.api_key else "loopback or unix socket only")
            checks.append(Check("network", "exposure" + suffix, OK, f"{bind}: {why}",
                                data={"bind": bind, "api_key": bool(facts.settings.api_key)}))
    return checks


def _port(bind: str, name: str) -> Check:
    from dhserve.serving.address import answers_livez, base_url, bindable

    data: dict[str, Any] = {"bind": bind}
    if bindable(bind):
        return Check("network", name, OK, f"{bind}: free", data={**data, "free": True})
    if bind.startswith("unix:"):
        data["free"] = False
        if answers_livez(bind):          # it connects: a server listens there
            return Check("network", name, OK,
                         f"{bind}: a server listens on it (a running dhserve, if this is "
                         "its socket)", data={**data, "listening": True})
        return Check("network", name, WARNING,
                     f"{bind}: the file exists but nothing accepts connections on it",
                     "a stale socket left by a server that was killed: Gunicorn cannot bind "
                     "it until it is removed", f"rm {bind[5:]}",
                     data={**data, "listening": False})
    # /livez's JSON tells dhserve from another server that answers there
    import urllib.request

    url = f"{base_url(bind)}/livez"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no http_proxy
    try:
        with direct.open(url, timeout=3) as response:
            answer = json.loads(response.read(1000) or b"null")
    except (OSError, ValueError):
        answer = None
    data.update(free=False, livez=answer)
    if isinstance(answer, dict) and answer.get("status") == "alive":
        return Check("network", name, OK,
                     f"{bind}: held by a running dhserve (it answers {url})", data=data)
    holder = _listener(bind)
    data["holder"] = holder
    who = f" by {holder}" if holder else ""
    return Check("network", name, ERROR, f"{bind}: in use{who}, not by dhserve",
                 "stop that process, or serve on another port: GUNICORN_BIND=127.0.0.1:8384 "
                 "(or dhserve serve --bind)",
                 (f"kill {holder.split()[0].removeprefix('pid=')}\n" if holder else "")
                 + f"ss -ltnp 'sport = :{bind.rpartition(':')[2]}'", data=data)


def _listener(bind: str) -> str | None:
    """`pid=N name` of the process listening on the bind's port, where psutil can tell."""
    import psutil

    port = int(bind.rpartition(":")[2])
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                try:
                    return f"pid={conn.pid} {psutil.Process(conn.pid).name()}"
                except psutil.Error:
                    return f"pid={conn.pid}"
    except (psutil.Error, OSError):
        return None
    return None
