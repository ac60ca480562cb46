"""ONNX Runtime sessions: one factory, providers from the settings, no silent CPU fallback;
the status of every known model file (`dhserve models`), each loaded and checked.

ONNX Runtime quietly builds a session on the CPU when the CUDA or cuDNN libraries cannot be
loaded, and `run()` may fall back to the CPU after a GPU failure. A render that was meant for
the GPU and runs 50x slower on the CPU looks like a hang to its users, so every session is
checked after it is made: a GPU that was asked for and is not in use is an error that says what
to install. Sessions are created in the process that uses them (never before a fork) and are
shared by its threads (`InferenceSession.run` is thread-safe).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dhserve.config import Settings
from dhserve.errors import DhserveError, ModelCorrupt, ModelError, ModelMissing, first_line
from dhserve.fsutil import file_digest
from dhserve.runtime.models import (
    DTYPES,
    KNOWN_MODELS,
    ModelSpec,
    TensorSpec,
    check_signature,
    model_path,
    require_model,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_PROVIDER = {"cuda": CUDA, "tensorrt": TENSORRT}


class LoadedBeforeFork(DhserveError):
    """A session used in a child of the process that made it: the CUDA-after-fork trap."""

    code, http_status = "runtime.loaded_before_fork", 503

    def __init__(self, what: str, parent: int):
        super().__init__(
            f"{what} was loaded in process {parent} and used in its forked child "
            f"{os.getpid()}: CUDA state does not survive fork. Load models after the process "
            f"starts (Gunicorn: preload_app = False, models loaded in post_worker_init or in "
            f"a separate `dhserve worker`)")


class GpuUnavailable(DhserveError):
    """A GPU was asked for and ONNX Runtime cannot use it."""

    code, http_status = "runtime.gpu_unavailable", 503


@dataclass(frozen=True)
class SessionConfig:
    """How sessions run: device, GPU provider and its options. Built from Settings."""

    device: str = "cpu"                      # cpu, cuda, cuda:N
    gpu_provider: str = "cuda"               # cuda | tensorrt
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    gpu_mem_limit_mb: float = 0.0            # 0: no limit on ORT's CUDA arena
    trt_cache_dir: Path | None = None        # TensorRT engines (minutes to build) live here
    threads: int = 0                         # CPU intra-op threads; 0 = ORT's default (cores)
    pad_batch: int = 0                       # dynamic-batch model: calls padded to this many
                                             # items (GPU: one shape, one cuDNN search); 0: off

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionConfig:
        return cls(device=settings.device, gpu_provider=settings.gpu_provider,
                   cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
                   gpu_mem_limit_mb=settings.gpu_mem_limit_mb,
                   trt_cache_dir=Path(settings.data_dir) / "trt-cache",
                   pad_batch=settings.batch_size if settings.device != "cpu" else 0)

    @property
    def wants_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def device_id(self) -> int:
        match = re.fullmatch(r"cuda:(\d+)", self.device)
        return int(match.group(1)) if match else 0

    @property
    def gpu_provider_name(self) -> str | None:
        """The execution provider that must be in use for this config, None on the CPU."""
        return _PROVIDER[self.gpu_provider] if self.wants_gpu else None

    def providers(self) -> list[tuple[str, dict[str, Any]]]:
        """ONNX Runtime's provider list, most preferred first. The CPU provider stays last
        on a GPU: shape arithmetic nodes normally run there by design."""
        if not self.wants_gpu:
            return [(CPU, {})]
        cuda: dict[str, Any] = {
            "device_id": self.device_id,
            "arena_extend_strategy": "kSameAsRequested",   # no power-of-two over-allocation
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
        }
        if self.gpu_mem_limit_mb > 0:
            cuda["gpu_mem_limit"] = int(self.gpu_mem_limit_mb * 2**20)
        chain = [(CUDA, cuda), (CPU, {})]
        if self.gpu_provider == "tensorrt":
            trt: dict[str, Any] = {"device_id": self.device_id, "trt_fp16_enable": True,
                                   "trt_engine_cache_enable": True}
            if self.trt_cache_dir is not None:
                trt["trt_engine_cache_path"] = str(self.trt_cache_dir)
            chain.insert(0, (TENSORRT, trt))
        return chain


def cuda_major_for_runtime(version: str = ort.__version__) -> int:
    """CUDA major version the onnxruntime-gpu wheels of `version` are built for."""
    major, minor = (int(p) for p in version.split(".")[:2])
    return 13 if (major, minor) >= (1, 27) else 12


def install_hint() -> str:
    """What to install for a GPU this onnxruntime cannot use (also `dhserve doctor`'s remedy)."""
    cuda = cuda_major_for_runtime()
    return (f"install onnxruntime-gpu {ort.__version__} in place of onnxruntime (never both: "
            f"they share the module name) with CUDA {cuda} and cuDNN 9, e.g. "
            f"pip uninstall onnxruntime && pip install \"onnxruntime-gpu[cuda,cudnn]=="
            f"{ort.__version__}\"; or set DHSERVE_DEVICE=cpu")


def check_available(config: SessionConfig) -> None:
    """Refuses a GPU config before any session is made when ONNX Runtime was built without
    the provider (the CPU-only `onnxruntime` wheel, say)."""
    wanted = config.gpu_provider_name
    if wanted is None:
        return
    compiled = ort.get_available_providers()
    if wanted not in compiled:
        raise GpuUnavailable(
            f"device {config.device} asks for {wanted}, but this onnxruntime "
            f"{ort.__version__} has only {', '.join(compiled)} compiled in: "
            + install_hint())
    if wanted == TENSORRT and CUDA not in compiled:
        raise GpuUnavailable(f"{TENSORRT} needs {CUDA} as well: " + install_hint())


def check_session(session: ort.InferenceSession, config: SessionConfig, what: str) -> None:
    """After creation: the GPU that was asked for is really in use, and stays so."""
    wanted = config.gpu_provider_name
    if wanted is None:
        return
    in_use = session.get_providers()
    if wanted not in in_use:
        raise GpuUnavailable(
            f"{what}: device {config.device} asks for {wanted}, but the session runs on "
            f"{', '.join(in_use)}: the provider could not be loaded (ONNX Runtime's log above "
            f"names the missing library, often libcudnn or libcublasLt for CUDA "
            f"{cuda_major_for_runtime()}, or the GPU {config.device_id} does not exist); "
            + install_hint())
    session.disable_fallback()   # a failing GPU run is an error, not a CPU rerun


_preloaded = False
_GPU_FAILURE = re.compile(r"cuda|cudnn|cublas|tensorrt|nvinfer|execution provider",
                          re.IGNORECASE)


def preload_gpu_libraries() -> None:
    """Loads CUDA/cuDNN from the nvidia-* wheels when they are installed (it only logs on
    failure; the provider check after session creation is what decides)."""
    global _preloaded
    if not _preloaded and hasattr(ort, "preload_dlls"):
        _preloaded = True
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - diagnostics only; check_session decides
            log.warning("onnxruntime.preload_dlls failed: %s", exc)


def session_options(config: SessionConfig, optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3         # errors only; a missing CUDA library is one
    if config.threads > 0:
        options.intra_op_num_threads = config.threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def create_session(path: Path, config: SessionConfig, what: str = "model",
                   optimize: bool = True) -> ort.InferenceSession:
    """An InferenceSession for the model file at `path`, on the configured device, checked.

    Raises ModelMissing or ModelCorrupt (ModelErrors) for the file, GpuUnavailable for the
    device. `what` names the model in messages ("wav2lip model")."""
    path = Path(path)
    if not path.is_file():
        raise ModelMissing(path, f"{what} file not found")
    check_available(config)
    session = open_session(path, config, what, session_options(config, optimize))
    check_session(session, config, what)
    return session


def open_session(path: Path, config: SessionConfig, what: str,
                 options: ort.SessionOptions) -> ort.InferenceSession:
    """The session as ONNX Runtime makes it, not yet checked: it may have landed on the CPU
    (`dhserve doctor` reads which providers it got before check_session judges it)."""
    if config.wants_gpu:
        preload_gpu_libraries()
        if config.trt_cache_dir is not None and config.gpu_provider == "tensorrt":
            config.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        session = ort.InferenceSession(str(path), options, providers=config.providers())
    except ort.capi.onnxruntime_pybind11_state.EPFail as exc:
        raise GpuUnavailable(f"{what}: {config.gpu_provider_name} failed to start: "
                             f"{first_line(exc)}; " + install_hint()) from None
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for a damaged file
        if config.wants_gpu and _GPU_FAILURE.search(str(exc)):
            raise GpuUnavailable(f"{what}: {config.gpu_provider_name} failed: "
                                 f"{first_line(exc)}; " + install_hint()) from None
        raise ModelCorrupt(path, f"cannot be loaded as an ONNX {what} "
                               f"({first_line(exc)})") from None
    return session


class OnnxModel:
    """A checked session with the caller's view: arrays by role in, float32 output out.

    Splits a call into the model's fixed batch (padding the last piece), casts to and from
    float16 for half-precision files. On CUDA the inputs go to the device once per call and
    the output comes back once: every later stage (blend, encode) needs it on the host, so
    binding outputs to device memory would only move the same copy elsewhere.
    """

    def __init__(self, spec: ModelSpec, path: Path, config: SessionConfig,
                 optimize: bool = True):
        self.spec, self.path, self.config = spec, Path(path), config
        self.pid = os.getpid()       # the fork guard: run() refuses in any other process
        try:
            self.session = create_session(self.path, config, spec.title, optimize)
        except ModelCorrupt as exc:
            raise ModelCorrupt(exc.path,
                                   f"{exc.reason}. Expected {spec.describe()}") from None
        inputs = [TensorSpec(t.name, tuple(t.shape), t.type) for t in self.session.get_inputs()]
        outputs = [TensorSpec(t.name, tuple(t.shape), t.type)
                   for t in self.session.get_outputs()]
        self.signature = check_signature(spec, inputs, outputs, self.path)
        self.output_dtype = DTYPES[outputs[0].dtype]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] != CPU

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Output 0 for a batch of any size; `feeds` maps each role to an (n, ...) array."""
        if os.getpid() != self.pid:
            raise LoadedBeforeFork(self.spec.title, self.pid)
        n = len(next(iter(feeds.values())))
        if n == 0:
            return np.zeros((0, *self.spec.output), np.float32)
        # A dynamic batch on a GPU still gets one shape: each new shape costs cuDNN a fresh
        # algorithm search (seconds with EXHAUSTIVE), and short last batches are common.
        step = self.signature.batch or self.config.pad_batch or n
        pieces = []
        for start in range(0, n, step):
            part = {role: array[start:start + step] for role, array in feeds.items()}
            count = len(next(iter(part.values())))
            if count < step:   # a fixed shape: repeat the last item to fill it
                part = {role: np.concatenate([a, np.repeat(a[-1:], step - count, 0)])
                        for role, a in part.items()}
            inputs = {self.signature.names[role]: np.ascontiguousarray(
                      a, dtype=self.signature.dtypes[role]) for role, a in part.items()}
            out = self.session.run([self.signature.output], inputs)[0]
            pieces.append(out[:count])
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return out.astype(np.float32, copy=False)


def load_model(settings: Settings, spec: ModelSpec, field: str,
               config: SessionConfig | None = None) -> OnnxModel:
    """The configured model of this kind, on the configured device, signature checked."""
    path = require_model(settings, spec, field)
    return OnnxModel(spec, path, config or SessionConfig.from_settings(settings))


@dataclass(frozen=True)
class ModelStatus:
    """One known model file, as `dhserve models` lists it."""

    kind: str                  # "wav2lip", "restore"
    setting: str               # Settings field naming it (DHSERVE_<SETTING>)
    name: str                  # file name
    path: Path
    present: bool
    size: int | None = None    # bytes
    sha256: str | None = None
    valid: bool | None = None  # signature checked and right; None when absent
    problem: str | None = None # why not valid (the ModelError's message)
    code: str | None = None    # the ModelError's code: model.corrupt, model.bad_signature
    tensors: str | None = None # as the file declares them: "source (N,1,80,16) float, … → …"
    batch: int | None = None   # fixed batch size; None: dynamic (or unknown)
    dtype: str | None = None   # "float32" | "float16"


def _tensor(arg) -> TensorSpec:
    """An ONNX Runtime NodeArg as a TensorSpec (symbolic dims shown as N)."""
    return TensorSpec(arg.name, tuple(d if isinstance(d, int) else "N" for d in arg.shape),
                      arg.type)


def model_statuses(settings: Settings, checksum: bool = True) -> list[ModelStatus]:
    """Every known model file: where it is looked for, whether it is there and loads with the
    right signature. Checks on the CPU without graph optimisation (fast, no GPU needed)."""
    statuses = []
    for spec in KNOWN_MODELS:
        path = model_path(settings, spec)
        status = functools.partial(ModelStatus, spec.kind, spec.setting, path.name, path)
        if not path.is_file():
            statuses.append(status(present=False))
            continue
        size = path.stat().st_size
        digest = file_digest(path) if checksum else None
        try:
            model = OnnxModel(spec, path, SessionConfig(), optimize=False)
        except ModelError as exc:
            statuses.append(status(present=True, size=size, sha256=digest, valid=False,
                                   problem=exc.message, code=exc.code))
            continue
        dtype = model.signature.dtypes[spec.inputs[0].role].name
        tensors = (", ".join(str(_tensor(t)) for t in model.session.get_inputs()) + " → "
                   + ", ".join(str(_tensor(t)) for t in model.session.get_outputs()))
        statuses.append(status(present=True, size=size, sha256=digest, valid=True,
                               batch=model.signature.batch, dtype=dtype, tensors=tensors))
        del model
    return statuses
