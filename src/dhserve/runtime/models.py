"""Model files dhserve knows: where they live, what their signatures must be, their status.

Names and shapes are read from each file, never assumed: FaceFusion's `wav2lip_96.onnx` names
its inputs `source` and `target`, other exports use other names, fixed batch 1 or a dynamic
batch, float32 or float16. What must hold is the shape of each tensor; a file that differs is
refused at load with the expected shapes in the message, not at the first frame.

No ONNX Runtime import here: the web tier may check which model files exist, and resolve
"auto", without loading any inference library. What `dhserve models` lists (each file loaded
and checked) is `dhserve.runtime.onnx.model_statuses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhserve.config import ENV_PREFIX, Settings
from dhserve.errors import ModelBadSignature, ModelMissing

DTYPES: dict[str, np.dtype] = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}
Dim = int | str | None     # a fixed size, or a symbolic / unknown one



@dataclass(frozen=True)
class TensorRule:
    """One tensor a model of some kind must have: its role and its shape after the batch."""

    role: str                  # what the caller calls it: "mel", "face"
    shape: tuple[int, ...]     # without the leading batch dimension


@dataclass(frozen=True)
class ModelSpec:
    """A kind of model dhserve runs: the Settings field naming its file and its signature."""

    kind: str                  # "wav2lip", "restore"
    title: str                 # in messages: "wav2lip model"
    setting: str               # Settings field with the file name
    inputs: tuple[TensorRule, ...]
    output: tuple[int, ...]    # output 0, without the batch dimension

    def describe(self) -> str:
        ins = " + ".join(f"{r.role} {_shape_text(('N', *r.shape))}" for r in self.inputs)
        return f"inputs {ins} → output {_shape_text(('N', *self.output))}, float32 or float16"


WAV2LIP = ModelSpec("wav2lip", "wav2lip model", "wav2lip_model",
                    (TensorRule("mel", (1, 80, 16)), TensorRule("face", (6, 96, 96))),
                    (3, 96, 96))
RESTORE = ModelSpec("restore", "face restoration model", "restore_model",
                    (TensorRule("face", (3, 512, 512)),), (3, 512, 512))
KNOWN_MODELS = (WAV2LIP, RESTORE)     # what `dhserve models` and the doctor list


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the file declares it."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str                 # ORT's type string, "tensor(float)"

    def __str__(self) -> str:
        return f"{self.name} {_shape_text(self.shape)} {self.dtype[7:-1]}"


@dataclass(frozen=True)
class Signature:
    """What a model file turned out to be, once checked against its spec."""

    names: dict[str, str]              # role → input name in the file
    dtypes: dict[str, np.dtype]        # role → input dtype
    output: str                        # name of output 0
    batch: int | None                  # fixed batch size, or None for a dynamic batch


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def _fits(declared: tuple[Dim, ...], wanted: tuple[int, ...]) -> bool:
    """The declared shape (batch first) fits the wanted one; symbolic dims fit anything."""
    if len(declared) != len(wanted) + 1:
        return False
    return all(not isinstance(d, int) or d == w for d, w in zip(declared[1:], wanted))


def check_signature(spec: ModelSpec, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    path: Path) -> Signature:
    """Matches the file's tensors to the spec's roles by shape; ModelError naming the expected
    and the found shapes when they do not match."""
    def refuse(why: str) -> ModelBadSignature:
        found = (f"inputs {', '.join(map(str, inputs)) or 'none'}; "
                 f"outputs {', '.join(map(str, outputs)) or 'none'}")
        return ModelBadSignature(path,
                                 f"not a {spec.title}: {why}. Expected {spec.describe()}; "
                                 f"found {found}")

    if len(inputs) != len(spec.inputs):
        raise refuse(f"{len(inputs)} inputs instead of {len(spec.inputs)}")
    names: dict[str, str] = {}
    dtypes: dict[str, np.dtype] = {}
    left = list(inputs)
    for rule in spec.inputs:
        match = next((t for t in left if _fits(t.shape, rule.shape)), None)
        if match is None:
            raise refuse(f"no input of shape {_shape_text(('N', *rule.shape))} for {rule.role}")
        if match.dtype not in DTYPES:
            raise refuse(f"input {match.name} is {match.dtype}")
        left.remove(match)
        names[rule.role], dtypes[rule.role] = match.name, DTYPES[match.dtype]
    if not outputs or not _fits(outputs[0].shape, spec.output):
        raise refuse(f"output 0 is not {_shape_text(('N', *spec.output))}")
    if outputs[0].dtype not in DTYPES:
        raise refuse(f"output {outputs[0].name} is {outputs[0].dtype}")
    batches = {t.shape[0] for t in inputs} | {outputs[0].shape[0]}
    fixed = {b for b in batches if isinstance(b, int)}
    if len(fixed) > 1:
        raise refuse(f"batch sizes differ between tensors ({sorted(fixed)})")
    batch = fixed.pop() if fixed else None
    if batch is not None and batch < 1:
        raise refuse(f"batch size {batch}")
    return Signature(names, dtypes, outputs[0].name, batch)


def model_path(settings: Settings, spec: ModelSpec) -> Path:
    return settings.models_path / getattr(settings, spec.setting)


def require_model(settings: Settings, spec: ModelSpec, field: str) -> Path:
    """The model's path; InputError naming the file when it is absent, so a job that asks for
    a model the server lacks is refused up front ("needs models/GFPGANv1.4.onnx")."""
    path = model_path(settings, spec)
    if not path.is_file():
        raise ModelMissing(field,
                           f"needs models/{path.name} (the {spec.title}; not found in the "
                           f"models folder, {ENV_PREFIX}MODELS_DIR)")
    return path
