"""The media group: PyAV's FFmpeg has the encoders dhserve writes with, and they work (a real
2-frame MP4 in memory); NVENC shown where this FFmpeg has it (dhserve does not need it)."""

from __future__ import annotations

import io

import av
import numpy as np

from dhserve.doctor.base import ERROR, OK, WARNING, Check, Facts, guarded
from dhserve.errors import first_line

REQUIRED_ENCODERS = ("libx264", "aac")
# transparent output (background transparent): VP9 with alpha + Opus in WebM, ProRes 4444 in MOV
ALPHA_ENCODERS = ("libvpx-vp9", "libopus", "prores_ks")
AAC_FRAME_SAMPLES = 1024           # one AAC frame: the test encode's whole sound


def media_checks(facts: Facts, encoders: tuple[str, ...] = REQUIRED_ENCODERS) -> list[Check]:
    """The encoders dhserve writes with, present and working (a real 2-frame MP4 in memory);
    NVENC shown where this FFmpeg has it (dhserve does not need it)."""
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
    checks.extend(_alpha_encoder(name) for name in ALPHA_ENCODERS)
    checks.extend(guarded("media", lambda: [_nvenc(facts)], "h264_nvenc"))
    return checks


def _encode() -> list[Check]:
    """A real 2-frame H.264 + AAC MP4, written in memory."""
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
        sound = av.AudioFrame.from_ndarray(np.zeros((1, AAC_FRAME_SAMPLES), np.float32),
                                           format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    return [Check("media", "encode", OK,
                  f"libx264 + aac wrote a {len(buffer.getvalue())}-byte MP4",
                  data={"bytes": len(buffer.getvalue())})]


def _nvenc(facts: Facts) -> Check:
    try:
        av.codec.Codec("h264_nvenc", "w")
        nvenc = "compiled into this FFmpeg"
    except Exception:  # noqa: BLE001 - UnknownCodecError and kin
        nvenc = "not in this FFmpeg"
    gpus = facts.gpu.available
    return Check("media", "h264_nvenc", OK,
                 f"h264_nvenc {nvenc}" + ("" if gpus else "; no GPU, so not usable") +
                 " (dhserve encodes with libx264 either way)", data={"nvenc": nvenc})


def _alpha_encoder(name: str) -> Check:
    """An encoder only transparent output needs: missing, every other render still works."""
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as exc:  # noqa: BLE001 - UnknownCodecError and kin
        return Check("media", name, WARNING,
                     f"encoder {name} missing from this FFmpeg ({first_line(exc)}): "
                     "--background transparent cannot be written",
                     "PyAV's wheels have it: reinstall PyAV from the wheel",
                     "pip install --force-reinstall --no-deps --only-binary=:all: \"av<19\"",
                     data={"codec": name})
    return Check("media", name, OK, f"encoder {name} ({codec.long_name}), for transparent "
                 "output", data={"codec": name})

