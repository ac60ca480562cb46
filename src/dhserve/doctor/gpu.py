"""The gpu group: the GPUs NVML sees (it never creates a CUDA context), against what asks
for one and the variables that choose what CUDA and a container can see."""

from __future__ import annotations

from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts
from dhserve.runtime.gpu import GpuDevice
from dhserve.serving.plan import ServingConfigError, visible_indices

GPU_FREE_WARN_MB = 2048            # CUDA context (~0.5 GB) + models + cuDNN workspace
MIB_PER_GIB = 1024                 # NVML's summary counts memory in MiB


def _index_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def gpu_checks(facts: Facts) -> list[Check]:
    gpu, variables = facts.gpu, facts.variables
    asks = facts.gpu_requests()
    devices = gpu.usable_devices
    nvml = gpu.to_json()
    checks = []
    if gpu.error is not None:
        checks.append(Check("gpu", "nvml", ERROR, f"reading the GPUs failed: {gpu.error}",
                            "NVML (the driver's management library) or nvidia-ml-py is broken "
                            "here: `nvidia-smi` shows whether the driver answers; reinstall "
                            "the driver, or nvidia-ml-py from requirements.lock",
                            "nvidia-smi", data={"nvml": nvml}))
    if not devices:
        reason = gpu.reason or "NVML sees no device"
        if asks:
            checks.append(Check(
                "gpu", "devices", ERROR,
                f"no GPU ({reason}), but {' and '.join(asks)} asks for one",
                "make the GPU visible: install the NVIDIA driver and check `nvidia-smi`; in "
                "Docker start the container with `--gpus all` (NVIDIA Container Toolkit); or "
                "serve on the CPU: DHSERVE_DEVICE=cpu, DHSERVE_GPUS=auto or none, "
                "DHSERVE_PROFILE=auto",
                "nvidia-smi\ndocker run --gpus all ...\nexport DHSERVE_DEVICE=cpu "
                "DHSERVE_GPUS=none DHSERVE_PROFILE=auto", data={"nvml": nvml, "asked_by": asks}))
        else:
            checks.append(Check("gpu", "devices", OK,
                                f"no GPU ({reason}): CPU mode, renders run on the CPU",
                                data={"nvml": nvml}))
    for device in devices:
        free = device.memory_free_mb
        text = (f"GPU {device.index}: {device.name}, "
                f"{device.memory_total_mb / MIB_PER_GIB:.1f} GiB, "
                f"{device.memory_used_mb / MIB_PER_GIB:.1f} GiB used (driver {gpu.driver})")
        data = {**device.to_json(), "driver": gpu.driver}
        if free < GPU_FREE_WARN_MB:
            checks.append(Check(
                "gpu", f"device {device.index}", WARNING, f"{text}: {free:.0f} MiB free",
                "another process holds this GPU's memory (see `nvidia-smi`); a renderer needs "
                "~2 GiB (CUDA context, models, cuDNN workspace): stop it, or choose another GPU "
                "with DHSERVE_GPUS", "nvidia-smi --query-compute-apps=pid,used_memory "
                "--format=csv", data=data))
        else:
            checks.append(Check("gpu", f"device {device.index}", OK, text, data=data))
    checks.append(_visibility(variables, devices, asks))
    alloc = variables.get("PYTORCH_CUDA_ALLOC_CONF")
    checks.append(Check(
        "gpu", "pytorch alloc conf", OK,
        f"PYTORCH_CUDA_ALLOC_CONF={alloc}" if alloc else
        "PYTORCH_CUDA_ALLOC_CONF unset (PyTorch's default caching allocator; dhserve renders "
        "with ONNX Runtime, which does not read it)", data={"value": alloc}))
    return checks


def _visibility(variables: dict[str, str | None], devices: tuple[GpuDevice, ...],
                asks: list[str]) -> Check:
    """CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES against the GPUs NVML sees (NVML
    ignores CUDA_VISIBLE_DEVICES; CUDA honours it; the container runtime decides what NVML
    can see from NVIDIA_VISIBLE_DEVICES)."""
    cuda = variables.get("CUDA_VISIBLE_DEVICES")
    nvidia = variables.get("NVIDIA_VISIBLE_DEVICES")
    order = variables.get("CUDA_DEVICE_ORDER")
    data = {"CUDA_VISIBLE_DEVICES": cuda, "NVIDIA_VISIBLE_DEVICES": nvidia,
            "CUDA_DEVICE_ORDER": order, "nvml_indices": [d.index for d in devices]}
    shown = f"CUDA_VISIBLE_DEVICES={'unset' if cuda is None else repr(cuda)}, " \
            f"NVIDIA_VISIBLE_DEVICES={'unset' if nvidia is None else repr(nvidia)}"
    if cuda is not None:
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
