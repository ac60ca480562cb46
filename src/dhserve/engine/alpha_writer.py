"""Output files with an alpha channel, for a transparent background: VP9 (yuva420p) with Opus
in WebM, which browsers and OBS play, or ProRes 4444 (yuva444p10le) with PCM in MOV, which
editors take. Both are Mp4Writer with another container and codecs: the same encoder thread,
audio cut and stamped the same way; frames are RGBA arrays (H, W, 4), alpha not premultiplied.

Which writer a render uses follows from its background and the output's suffix
(writer_class); a transparent background with an .mp4 output is refused before any work
(check_container), since H.264 in MP4 has no alpha.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import av
import numpy as np

from dhserve.config import TRANSPARENT
from dhserve.engine.mp4_writer import AAC_FRAME_SIZE, Mp4Writer
from dhserve.errors import OptionsInvalid

ALPHA_SUFFIXES = (".webm", ".mov")
# VP9: libvpx's realtime mode; its default ("good", cpu-used 1) took seconds per 720p frame.
VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "28", "b": "0",
               "auto-alt-ref": "0"}
PRORES_OPTIONS = {"profile": "4444", "qscale": "11", "vendor": "apl0"}


class WebmAlphaWriter(Mp4Writer):
    """VP9 with alpha (yuva420p) + Opus, in WebM."""

    FORMAT, FORMAT_OPTIONS = "webm", {}
    AUDIO_CODEC = "libopus"
    AUDIO_FRAME_SIZE = 960                      # 20 ms at 48 kHz
    AUDIO_RATES: tuple[int, ...] = (48000,)
    AUDIO_FORMAT = "flt"
    VIDEO_CODEC, PIX_FMT, VIDEO_OPTIONS = "libvpx-vp9", "yuva420p", VP9_OPTIONS

    def _add_video(self, preset: str, crf: int) -> av.VideoStream:
        # a codec name from a class attribute: PyAV's overloads type it per literal name
        video = cast(av.VideoStream, self._container.add_stream(self.VIDEO_CODEC, rate=self.fps))
        video.pix_fmt = self.PIX_FMT
        video.options = dict(self.VIDEO_OPTIONS)
        video.thread_count = 0
        return video

    def _to_frame(self, rgba: np.ndarray) -> av.VideoFrame:
        return av.VideoFrame.from_ndarray(rgba, format="rgba")


class MovAlphaWriter(WebmAlphaWriter):
    """ProRes 4444 with alpha (yuva444p10le) + 16-bit PCM, in MOV."""

    FORMAT, FORMAT_OPTIONS = "mov", {"movflags": "+faststart"}
    AUDIO_CODEC = "pcm_s16le"
    AUDIO_FRAME_SIZE = AAC_FRAME_SIZE           # PCM takes any size: the MP4 writer's
    AUDIO_RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
    AUDIO_FORMAT = "s16"
    VIDEO_CODEC, PIX_FMT, VIDEO_OPTIONS = "prores_ks", "yuva444p10le", PRORES_OPTIONS


def check_container(background: str, out: Path) -> None:
    """The output's suffix can hold the background: alpha needs .webm or .mov."""
    suffix = Path(out).suffix.lower()
    if background == TRANSPARENT and suffix not in ALPHA_SUFFIXES:
        raise OptionsInvalid("background", f"transparent needs an output with alpha: use "
                             f".webm or .mov, not {suffix or 'a name without a suffix'}")


def writer_class(background: str, out: Path) -> type[Mp4Writer]:
    """The writer for a render's output: alpha for a transparent background, else MP4."""
    if background != TRANSPARENT:
        return Mp4Writer
    check_container(background, out)
    return MovAlphaWriter if Path(out).suffix.lower() == ".mov" else WebmAlphaWriter
