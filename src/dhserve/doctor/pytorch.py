"""The pytorch group: only where torch is installed (dhserve does not need it), what torch says
about CUDA and whether asking initialised CUDA, asked in a child process (TORCH_PROBE) as a
forking server would ask. torch is imported in that child only: a CUDA context it makes must
not land in the doctor, nor a crash of its CUDA libraries end it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts, run_probe, said
from dhserve.doctor.onnxruntime import installed_distributions
from dhserve.serving.cuda_guard import cuda_initialised_here

TORCH_PROBE = "dhserve.doctor.pytorch:torch_probe"
TORCH_PROBE_TIMEOUT_S = 120.0      # importing torch with its CUDA libraries takes seconds
# The PyTorch wheel index for a CUDA major (the one onnxruntime-gpu needs, so both load the
# same CUDA libraries)
TORCH_INDEX = {12: "cu126", 13: "cu130"}


def pytorch_checks(facts: Facts) -> list[Check]:
    """Only where torch is installed. torch is asked about CUDA in a child process with the
    environment the doctor was started with (torch_probe): whether that initialised CUDA is
    what a forking server would meet."""
    if importlib.util.find_spec("torch") is None:
        return [Check("pytorch", "torch", OK, "not installed (dhserve renders with ONNX "
                      "Runtime; PyTorch is optional)", data={"installed": False})]
    result = run_probe(TORCH_PROBE, {}, facts.environ, TORCH_PROBE_TIMEOUT_S)
    answer = result.answer or {}
    if result.problem or "error" in answer:
        problem = result.problem or answer["error"]
        return [Check("pytorch", "torch", ERROR, f"torch is installed but asking it about CUDA "
                      f"failed: {problem}", "a broken or mismatched torch install (its own log "
                      "is in --json, data.log): reinstall it, or uninstall it (dhserve does "
                      "not need it)", "pip uninstall -y torch",
                      data={"installed": True, "problem": problem, "log": result.log[-20:]})]
    return pytorch_verdict(facts, answer, *onnxruntime_cuda_majors())


def onnxruntime_cuda_majors() -> tuple[int | None, int]:
    """The CUDA major onnxruntime-gpu needs (None: not installed), and the one the installed
    onnxruntime's GPU build would need (12 when there is none): torch should load the same
    CUDA libraries."""
    # runtime.onnx imports onnxruntime, which may be missing or broken (the onnxruntime
    # group says so): only here, where a version is there to read
    from dhserve.runtime.onnx import cuda_major_for_runtime

    found = installed_distributions()
    gpu = found.get("onnxruntime-gpu")
    any_version = gpu or next(iter(found.values()), None)
    return (cuda_major_for_runtime(gpu) if gpu else None,
            cuda_major_for_runtime(any_version) if any_version else 12)


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
    gpus = facts.gpu.usable_devices
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


def torch_probe(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: what torch says about CUDA with this environment, and whether asking
    initialised CUDA here (libcuda loaded): a process that then forks would hand its workers a
    broken CUDA. `request` is empty."""
    try:
        import torch  # the optional part this group asks about: only ever in the child

        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # noqa: BLE001 - a broken install
        return {"error": said(exc)}
    return {"version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": available, "device_count": count,
            "cuda_initialised": cuda_initialised_here()}
