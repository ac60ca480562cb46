"""Speech: decode to 16 kHz mono, Wav2Lip mel features, per-frame loudness and mouth openness."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from dhserve.engine.media import (
    SteadyResampler,
    check_file,
    decode_audio,
    ffmpeg_reason,
    open_input,
)
from dhserve.errors import AudioEmpty, AudioTooLong, CorruptInput, InputError, NoAudioStream

SAMPLE_RATE = 16000
# Wav2Lip's audio hyper-parameters, as its hparams.py sets them: the model was trained on
# exactly these mel spectrograms, so they are not tunable.
N_FFT, HOP, WIN = 800, 200, 800
N_MELS, FMIN, FMAX = 80, 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB, MIN_LEVEL_DB, MAX_ABS = 20.0, -100.0, 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP   # 80
MEL_STEP = 16                                # mel frames per video frame chunk (200 ms)


def decode_speech(path: Path, field: str = "audio", max_mb: float | None = None,
                  max_seconds: float | None = None) -> np.ndarray:
    """Any audio FFmpeg reads (wav, mp3, m4a, ogg, flac, a video's soundtrack) → float32 mono.

    Stops with audio.too_long as soon as `max_seconds` is passed, whatever the container
    claimed, so a stream with no declared duration cannot fill the memory."""
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    decoded = 0
    path = check_file(path, field, max_mb)
    # Joined files may change format, layout or rate midway: SteadyResampler follows them.
    resampler = SteadyResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    with open_input(path, field) as container:
        if not container.streams.audio:
            raise NoAudioStream(field, "file has no audio stream")
        stream = container.streams.audio[0]
        try:
            for frame in decode_audio(container, stream, field):
                for piece in resampler.resample(frame):
                    chunks.append(piece.to_ndarray().reshape(-1))
                    decoded += chunks[-1].size
                if max_seconds is not None and limit is not None and decoded > limit:
                    raise too_long(field, decoded / SAMPLE_RATE, max_seconds)
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.error.FFmpegError as exc:   # the resampler's (decode_audio answers its own)
            raise CorruptInput(field, "audio stream cannot be decoded "
                               f"({ffmpeg_reason(exc)})") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size < SAMPLE_RATE // 100:
        raise AudioEmpty(field, "audio stream is empty (no samples to speak)")
    return samples


def too_long(field: str, seconds: float, limit: float) -> InputError:
    return AudioTooLong(field,
                        f"{seconds:.1f} s is over the limit of {limit:g} s")


def _hz_to_mel(f):
    """Slaney's mel scale, as librosa uses by default (htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """(80, 401) Slaney-normalised triangular filters, equal to librosa.filters.mel."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def mel_frequencies() -> np.ndarray:
    """(80,) centre frequency (Hz) of each mel band, float32."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    return edges[1:-1].astype(np.float32)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    n = np.arange(WIN)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)).astype(np.float32)  # periodic Hann


def mel_spectrogram(wav: np.ndarray, block: int = 4096) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram, (80, T) float32 in [-4, 4], 80 frames/s.

    Computed in blocks of STFT frames so a long speech never needs a (T, 800) float64 matrix.
    """
    wav = np.asarray(wav, dtype=np.float32)
    y = np.empty_like(wav)
    y[0] = wav[0]
    y[1:] = wav[1:] - PREEMPHASIS * wav[:-1]
    pad = N_FFT // 2
    y = np.pad(y, pad, mode="reflect" if y.size > pad else "constant")
    n_frames = 1 + (y.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP][:n_frames]
    basis, window = mel_basis(), _window()
    out = np.empty((N_MELS, n_frames), dtype=np.float32)
    for start in range(0, n_frames, block):
        spec = np.abs(np.fft.rfft(frames[start:start + block] * window, axis=1))
        out[:, start:start + block] = basis @ spec.T.astype(np.float32)
    db = 20.0 * np.log10(np.maximum(1e-5, out)) - REF_LEVEL_DB
    return np.clip(2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS,
                   -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_chunks(mel: np.ndarray, fps: float, start: int, count: int,
               speech_frames: int) -> np.ndarray:
    """(count, 80, 16) mel windows for video frames start..start+count-1.

    Frame i takes mel[:, int(i*80/fps) : +16], clamped to the end; frames at or past
    `speech_frames` (beyond the speech) get zeros.
    """
    out = np.zeros((count, N_MELS, MEL_STEP), dtype=np.float32)
    total = mel.shape[1]
    for k in range(count):
        i = start + k
        if i >= speech_frames or total < MEL_STEP:
            continue
        s = min(int(i * MEL_FRAMES_PER_SECOND / fps), total - MEL_STEP)
        out[k] = mel[:, s:s + MEL_STEP]
    return out


def frame_count(samples: int, fps: float) -> int:
    """Video frames that cover `samples` of speech: the output ends within one frame of it."""
    return max(1, round(samples / SAMPLE_RATE * fps))


def loudness_db(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """RMS level in dBFS of the speech under each video frame (window: the frame's 1/fps)."""
    bounds = (np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(np.int64)
    bounds = np.minimum(bounds, wav.size)
    energy = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    sums = energy[bounds[1:]] - energy[bounds[:-1]]
    lengths = np.maximum(bounds[1:] - bounds[:-1], 1)
    return (10 * np.log10(sums / lengths + 1e-12)).astype(np.float32)


def mouth_openness(wav: np.ndarray, fps: float, n_frames: int, floor_db: float = -55.0,
                   range_db: float = 32.0, attack: float = 0.7,
                   release: float = 0.45) -> np.ndarray:
    """How far the mouth should be open in each frame, 0 (shut) to 1 (wide), from loudness.

    Levels are taken relative to the speech's own loud parts, so quiet and loud recordings
    animate alike; anything below `floor_db` dBFS (or `range_db` under the loud parts) is
    silence and shuts the mouth. Attack/release smoothing makes the jaw open quickly and
    close a little slower, as jaws do.
    """
    level = loudness_db(wav, fps, n_frames)
    voiced = level[level > floor_db]
    if voiced.size == 0:
        return np.zeros(n_frames, dtype=np.float32)
    top = float(np.percentile(voiced, 95))
    bottom = max(floor_db, top - range_db)
    target = np.clip((level - bottom) / max(top - bottom, 1e-6), 0.0, 1.0) ** 0.8
    out = np.empty(n_frames, dtype=np.float32)
    value = 0.0
    for i, t in enumerate(target):
        value += (t - value) * (attack if t > value else release)
        out[i] = value
    return out
