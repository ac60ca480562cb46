"""The render's output file: RGB frames into H.264 (yuv420p) and the speech into AAC, in an
MP4 with faststart, written while the render runs.

Why a thread and a short queue: x264 and PyAV release the GIL, so the caller's decoding and
animation overlap with the encoder. Why the audio is cut and stamped here: the speech may come
in any container and sample format, and AAC takes 1024-sample frames stamped in its own time
base; anything else shifted or stretched the speech (see Mp4Writer._pump_audio). A full disk
is told apart from other write failures (is_disk_full) so that it is reported as
storage.full, which a resubmit retries.
"""

from __future__ import annotations

import errno
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dhserve.engine.media_input import SteadyResampler, decode_audio, open_input
from dhserve.engine.rgb_frames import even_size, rgb_to_frame
from dhserve.errors import AudioEmpty, NoAudioStream, StorageFull

# Sample rates the AAC encoder takes; others are resampled to 48 kHz.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FALLBACK_RATE = 48000
AAC_FRAME_SIZE = 1024
AAC_BIT_RATE = {"mono": 96_000, "stereo": 128_000}
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota), in Python or in FFmpeg (PyAV's errors
    carry the errno too)."""
    return (isinstance(exc, (OSError, av.error.FFmpegError))
            and getattr(exc, "errno", None) in NO_SPACE)


def disk_full() -> StorageFull:
    return StorageFull("the data disk is full: no space left to write the result")


class Mp4Writer:
    """Streams RGB frames into H.264 (yuv420p) and the speech into AAC, MP4 with faststart.

    Encoding runs on a thread of its own behind a short queue: x264 and PyAV release the GIL,
    so the caller's decoding and animation overlap with the encoder (on 2 cores at 720p this
    took the `superfast` preset from 45 to 72 frames/s). Only that thread touches the
    container. Audio is encoded alongside the video (never far ahead of it), so the file is
    interleaved and the whole speech track is never held encoded in memory.
    """

    AUDIO_LEAD_SECONDS = 0.5
    QUEUE_FRAMES = 8
    FORMAT, FORMAT_OPTIONS = "mp4", {"movflags": "+faststart"}
    AUDIO_CODEC = "aac"
    AUDIO_FRAME_SIZE = AAC_FRAME_SIZE           # samples per encoded audio frame
    AUDIO_RATES: tuple[int, ...] = AAC_RATES   # others are resampled to AAC_FALLBACK_RATE
    AUDIO_FORMAT = "fltp"

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, audio: Path | None,
                 preset: str = "superfast", crf: int = 18, audio_field: str = "audio"):
        self.path = Path(path)
        self.width, self.height = even_size(width, height)
        self.fps = Fraction(fps)
        self._container = av.open(str(self.path), "w", format=self.FORMAT,
                                  options=dict(self.FORMAT_OPTIONS))
        self._video = self._add_video(preset, crf)
        self._video.width, self._video.height = self.width, self.height
        self._video.time_base = 1 / self.fps
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._failure: Exception | None = None
        self._aborting = False
        self._thread = threading.Thread(target=self._encode_loop, name="dhserve-encoder",
                                        daemon=True)
        self._audio_in: av.container.InputContainer | None = None
        if audio is not None:
            try:
                self._open_audio(audio, audio_field)
            except BaseException:
                self.abort()
                raise
        self._thread.start()

    def _add_video(self, preset: str, crf: int) -> av.VideoStream:
        """The video stream (subclasses: other codecs, with alpha)."""
        video = self._container.add_stream("libx264", rate=self.fps)
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(crf), "preset": preset}
        return video

    def _to_frame(self, rgb: np.ndarray) -> av.VideoFrame:
        return rgb_to_frame(rgb)

    def _open_audio(self, audio: Path, field: str) -> None:
        """Opens the speech and decodes its first frame: the AAC stream takes its rate and
        layout (the container's figures may be missing before decoding)."""
        self._audio_in = container = open_input(audio, field)
        if not container.streams.audio:
            raise NoAudioStream(field, "file has no audio stream")
        source = container.streams.audio[0]
        self._audio_frames = decode_audio(container, source, field)
        first = next(self._audio_frames, None)
        if first is None:
            raise AudioEmpty(field, "audio stream is empty (no samples to speak)")
        rate = (first.sample_rate if first.sample_rate in self.AUDIO_RATES
                else AAC_FALLBACK_RATE)
        layout = "mono" if first.layout.nb_channels == 1 else "stereo"
        stream = self._container.add_stream(self.AUDIO_CODEC, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)      # an audio codec, by its class's name
        self._audio = stream
        self._audio.bit_rate = AAC_BIT_RATE[layout]
        self._audio_frame_size = self.AUDIO_FRAME_SIZE
        self._resampler = SteadyResampler(format=self.AUDIO_FORMAT, layout=layout, rate=rate)
        self._fifo = av.AudioFifo()
        self._pending: av.AudioFrame | None = first
        self._audio_samples = 0
        self._audio_rate = rate

    def write(self, rgb: np.ndarray) -> None:
        """Queues one frame; the array must not be modified afterwards."""
        self._raise_failure()
        self._queue.put(rgb)

    def _encode_loop(self) -> None:
        index = 0
        try:
            while (rgb := self._queue.get()) is not None:
                if self._aborting:
                    continue
                if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
                    rgb = np.ascontiguousarray(rgb[: self.height, : self.width])
                frame = self._to_frame(rgb)
                frame.pts = index
                self._container.mux(self._video.encode(frame))
                index += 1
                self._pump_audio(index / self.fps + self.AUDIO_LEAD_SECONDS)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._failure = exc
            while self._queue.get() is not None:  # unblock a producer waiting on put()
                pass

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _pump_audio(self, until_seconds: float | None) -> None:
        """Encodes source audio up to `until_seconds` (None: to the end).

        The decoded speech is converted to the encoder's format, layout and rate, then cut
        into AAC's 1024-sample frames, each stamped in samples (time base 1/rate). Without
        the time base, a frame the resampler passed through kept the source's (MP3:
        1/14112000, Matroska: 1/1000) and the encoder read the stamps in it: MP3 failed,
        ADTS kept 0.03 s, WebM claimed minutes."""
        if self._audio_in is None:
            return
        while until_seconds is None or self._audio_samples < until_seconds * self._audio_rate:
            frame, self._pending = self._pending, None
            if frame is None:
                frame = next(self._audio_frames, None)
            for out in self._resampler.resample(frame):
                out.pts, out.time_base = None, Fraction(1, self._audio_rate)  # as the FIFO's
                self._fifo.write(out)
            ending = frame is None
            size = self._audio_frame_size
            while self._fifo.samples >= size or (ending and self._fifo.samples):
                chunk = self._fifo.read(min(size, self._fifo.samples))
                assert chunk is not None        # never asks for more than the FIFO holds
                self._encode_audio(chunk)
            if ending:
                self._container.mux(self._audio.encode(None))
                self._audio_in.close()
                self._audio_in = None
                return

    def _encode_audio(self, frame: av.AudioFrame) -> None:
        frame.pts = self._audio_samples
        frame.time_base = Fraction(1, self._audio_rate)
        self._audio_samples += frame.samples
        self._container.mux(self._audio.encode(frame))

    def close(self) -> None:
        """Finishes the file: flushes the encoder, writes the rest of the speech."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._raise_failure()
            self._container.mux(self._video.encode(None))
            self._pump_audio(None)
            self._container.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stops without finishing; the caller removes the partial file."""
        self._aborting = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        for resource in (self._audio_in, self._container):
            try:
                if resource is not None:
                    resource.close()
            except av.error.FFmpegError:
                pass
        self._audio_in = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()

