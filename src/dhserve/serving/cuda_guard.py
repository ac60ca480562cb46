"""The master-CUDA guard. A CUDA context made in the Gunicorn master (preloading a model,
`torch.cuda.is_available()` at import, an ONNX Runtime CUDA session in on_starting) is
inherited broken by every forked worker: "Cannot re-initialize CUDA in forked subprocess", or a
hang. The master checks, before it forks, that nothing in it has initialised CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Makes torch.cuda.is_available() ask NVML instead of initialising CUDA (PyTorch >= 2.0).
NVML_CHECK = ("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

REMEDY = ("Load models in the workers, after the fork: keep preload_app = False (and no "
          "--preload in GUNICORN_CMD_ARGS), make no torch.cuda call, ONNX Runtime CUDA session "
          "or model load at import time or in on_starting/when_ready; set "
          "PYTORCH_NVML_BASED_CUDA_CHECK=1 so torch.cuda.is_available() does not initialise "
          "CUDA. dhserve loads its models in each worker after it started.")


def cuda_initialised_here() -> str | None:
    """Evidence that this process has initialised CUDA, for the message; None when it has not."""
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(torch, "cuda", None)       # a partial import has none
        if cuda is not None and cuda.is_initialized():
            return "torch.cuda.is_initialized() is True"
    driver = _mapped_cuda_driver()
    if driver:
        return f"the CUDA driver library is loaded in this process ({driver})"
    return None


def _mapped_cuda_driver() -> str | None:
    """libcuda is loaded by the first CUDA call of any framework (cuInit); NVML does not load it."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:              # not Linux: only the torch check applies
        return None
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)       # address perms offset dev inode [path]
        if len(parts) == 6 and os.path.basename(parts[5]).startswith("libcuda.so"):
            return parts[5]
    return None


ENGINE_MODULES = ("onnxruntime", "mediapipe", "torch", "tensorflow")


def engine_in_master() -> str | None:
    """A refusal when a model framework is imported in the master: its thread pools and locks
    are inherited broken by forked workers (a hang at exit, or in the first inference)."""
    loaded = [name for name in ENGINE_MODULES if name in sys.modules]
    if not loaded:
        return None
    return (f"{', '.join(loaded)} imported in the Gunicorn master before the workers were "
            f"forked: forked workers inherit its threads and locks broken. {REMEDY}")


def refusal(evidence: str) -> str:
    return (f"CUDA was initialised in the Gunicorn master before the workers were forked "
            f"({evidence}): every worker would fail with 'Cannot re-initialize CUDA in forked "
            f"subprocess' or hang. Refusing to start. {REMEDY}")
