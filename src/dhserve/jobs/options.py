"""A job's render choices: which ones a client may make, and of what JSON type (admission
checks them before the job is queued; the worker reads them again when it renders). Besides
RenderOptions' fields a job chooses its result's `container`, which is no render option: the
output's name carries it to the render."""

from __future__ import annotations

import json
import math
import typing
from functools import cache
from pathlib import Path
from typing import Any

from dhserve.config import Settings
from dhserve.engine.preflight import RenderOptions
from dhserve.errors import OptionsInvalid
from dhserve.jobs.model import (
    BACKGROUND,
    CONTENT_TYPES,
    KEEP,
    TRANSPARENT,
    JobSpec,
    background_option,
)

# Service limits and the batch size (memory) stay the operator's; a job may choose the rest.
NOT_JOB_OPTIONS = frozenset({"max_input_mb", "max_video_seconds", "max_audio_seconds",
                             "max_video_pixels", "frame_cache_mb", "batch_size"})
CONTAINER = "container"         # the job's own choice: not a RenderOptions field
# What a JSON value must be for a field of this type (bool is not a number; an integer is
# a fine float); the words say it to a client who sent something else.
JSON_KINDS: dict[type, tuple[str, typing.Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)),
    str: ("a string", lambda v: isinstance(v, str)),
}


@cache
def _field_types() -> dict[str, tuple[type, bool]]:
    """RenderOptions' fields as (type, whether None is allowed)."""
    kinds = {}
    for name, hint in typing.get_type_hints(RenderOptions).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        kinds[name] = (base, optional)
    return kinds


def type_problem(name: str, value: Any) -> str | None:
    """Why `value` (as JSON gave it) cannot be the option `name`, by the field's type."""
    base, optional = _field_types()[name]
    if value is None:
        return None if optional else f"must be {JSON_KINDS[base][0]}; got null"
    if base not in JSON_KINDS:          # a type JSON cannot carry: from_settings judges it
        return None
    words, fits = JSON_KINDS[base]
    if fits(value):
        return None
    return f"must be {words}; got {_json_kind(value)} {_shown(value)}"


def _json_kind(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _shown(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "…"


def job_render_options(settings: Settings, options: dict[str, Any]) -> RenderOptions:
    """A job's options over the service's defaults; unknown or reserved names, and values of
    the wrong type, are refused (InputError options.invalid naming the option). The
    `container` choice is checked here and left out of the RenderOptions."""
    if not isinstance(options, dict):
        raise OptionsInvalid("options",
                             f"must be an object; got {_json_kind(options)}")
    allowed = set(RenderOptions.__dataclass_fields__) - NOT_JOB_OPTIONS | {CONTAINER}
    for name, value in options.items():
        if name not in allowed:
            raise OptionsInvalid(str(name)[:64],
                                 f"unknown option; a job may set {', '.join(sorted(allowed))}")
        if name == CONTAINER:
            problem = _container_problem(value)
        else:
            problem = type_problem(name, value) or (
                _job_background_problem(value) if name == BACKGROUND else None)
        if problem:
            raise OptionsInvalid(name, problem)
    return RenderOptions.from_settings(
        settings, **{name: value for name, value in options.items() if name != CONTAINER})


def _job_background_problem(value: str) -> str | None:
    """A job's background option is keep, transparent or a #rrggbb colour; an image is an
    input of the job (JobSpec.background), never a file name here, which would be a path on
    the server that a client must not choose."""
    if background_option(value):
        return None                                  # RenderOptions judges the colour
    return (f"must be keep or a #rrggbb colour (like #00b140), or transparent; got "
            f"{_shown(value)}; an image background is the input `background` (a file, URL "
            "or path), not an option")


def _container_problem(value: Any) -> str | None:
    if isinstance(value, str) and value in CONTENT_TYPES:
        return None
    return f"must be {', '.join(CONTENT_TYPES)}; got {_json_kind(value)} {_shown(value)}"


def job_container(spec: JobSpec) -> str:
    """The container of the job's result, once it can hold what the job asks for: alpha
    (transparent) only in webm or mov, and webm or mov only for alpha; an image and a
    background option not both. OptionsInvalid naming the choice at fault otherwise."""
    background = spec.options.get(BACKGROUND, KEEP)
    if spec.background is not None and background != KEEP:
        raise OptionsInvalid(BACKGROUND, "give an image or options.background, not both")
    container = spec.container
    if background == TRANSPARENT and container == "mp4":
        raise OptionsInvalid(CONTAINER, "transparent output needs webm or mov (mp4 has no "
                             "alpha channel)")
    if background != TRANSPARENT and container != "mp4":
        raise OptionsInvalid(CONTAINER, "webm and mov carry a transparent background; "
                             "other backgrounds give an mp4")
    named = Path(spec.output).suffix.lower().lstrip(".") if spec.output else container
    if named != container and (named in CONTENT_TYPES or container != "mp4"):
        raise OptionsInvalid(CONTAINER, f"the output's name ends in .{named}, the "
                             f"container is {container}: name it .{container}")
    return container
