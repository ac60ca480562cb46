"""The models group: each model file dhserve knows, present, loading, with the signature its
backend expects (as `dhserve models` shows them); absent is an error only where something
asks for it."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields

from dhserve.config import Settings
from dhserve.doctor.base import BYTES_PER_MIB, ERROR, OK, Check, Facts
from dhserve.engine.lipsync import resolve_backend
from dhserve.errors import ModelBadSignature
from dhserve.runtime.onnx import model_statuses


def model_checks(facts: Facts) -> list[Check]:
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
        size = f"{(status.size or 0) / BYTES_PER_MIB:.1f} MiB, sha256 {status.sha256}"
        if status.valid:
            batch = "dynamic batch" if status.batch is None else f"batch {status.batch}"
            checks.append(Check("models", name, OK,
                                f"{status.path}: loads, {status.tensors} ({status.dtype}, "
                                f"{batch}), {size}", data=data))
        elif status.code == ModelBadSignature.code:     # status.code: what the check met
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
