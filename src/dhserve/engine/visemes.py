"""Mouth shapes from the speech itself: lip width (spread ↔ rounded) and lip closure per frame.

No model and no language: the shapes come from the Wav2Lip mel spectrogram the pipeline
already computes. Two formant-like estimates per 12.5 ms mel frame carry the vowel quality:
F1 (the power centroid between 200 and 800 Hz: low for i/u, high for a) and F2 (the lowest
strong peak between 800 and 2900 Hz: high for i/e, low for u/o). A high F2 spreads the lips;
a low F2 with a low F1 rounds them; a (high F1) is neutral. Bilabial closure (m, b, p) is a
voiced murmur with almost nothing above 500 Hz, or a short dip in the level between two
syllables (the closure before a burst, a nasal murmur), and shuts the lips whatever the
loudness. The targets then blend as lips do: they move towards a new
shape in ~40 ms and leave it in ~80 ms, and a quiet syllable shapes the lips less.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dhserve.engine.audio import (
    MAX_ABS,
    MEL_FRAMES_PER_SECOND,
    MEL_STEP,
    MIN_LEVEL_DB,
    mel_frequencies,
)

F1_BAND, F2_BAND = (200.0, 800.0), (800.0, 2900.0)
PEAK_DB = 8.0
SHAPE_GAIN = 2.0   # a vowel half way to i (or u) already shapes the lips fully
LOW_BAND, HIGH_BAND = (55.0, 500.0), (600.0, 4000.0)
SPREAD_F2 = (1700.0, 2200.0)   # F2 (Hz) from neutral to fully spread
ROUND_F2 = (1750.0, 1250.0)    # F2 (Hz) from neutral to fully rounded ...
ROUND_F1 = (600.0, 450.0)      # ... while F1 (Hz) is this low (an open a is never rounded)
MURMUR_DB = (16.0, 24.0)       # low band over high band (dB): a nasal murmur / lips shut
DIP_S, DIP_DB = 0.1, (8.0, 16.0)   # a dip this deep (dB) within this far of loud speech shuts
ATTACK_S, RELEASE_S = 0.04, 0.08   # time constants of the blend towards / away from a shape
CLOSE_S, PART_S = 0.03, 0.015      # ... and of the lips meeting / parting
SILENT_DB = -62.0              # (dB under Wav2Lip's reference) no speech here


@dataclass(frozen=True)
class MouthShapes:
    """Per video frame: `width` -1 (rounded) .. 0 (neutral) .. +1 (spread), scaled by how
    loud the syllable is; `closure` 0 (free) .. 1 (lips pressed together)."""

    width: np.ndarray
    closure: np.ndarray


@lru_cache(maxsize=1)
def _bands() -> dict[str, np.ndarray]:
    f = mel_frequencies()
    return {name: ((f >= lo) & (f < hi)).astype(np.float32)
            for name, (lo, hi) in (("f1", F1_BAND), ("f2", F2_BAND), ("low", LOW_BAND),
                                   ("high", HIGH_BAND), ("speech", (200.0, 4000.0)),
                                   ("hiss", (4000.0, 7600.0)))}


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 at lo, 1 at hi (either order), clipped."""
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def frame_targets(mel: np.ndarray) -> tuple[np.ndarray, ...]:
    """Width target, how far to trust it (0..1: a loud voiced vowel), closure target and
    level (dB) of each mel frame of an (80, T) block."""
    db = (mel.astype(np.float32) + MAX_ABS) * (-MIN_LEVEL_DB / (2 * MAX_ABS)) + MIN_LEVEL_DB
    power = np.power(10.0, db / 10.0, dtype=np.float32)            # (80, T)
    bands, f = _bands(), mel_frequencies()

    def centroid(name: str) -> np.ndarray:
        weights = power * bands[name][:, None]
        return (f @ weights) / np.maximum(weights.sum(0), 1e-12)

    def level(name: str) -> np.ndarray:
        return 10 * np.log10(bands[name] @ power / bands[name].sum() + 1e-12)

    f1 = centroid("f1")
    # F2: the lowest spectral peak of the F2 range within PEAK_DB of its strongest; the
    # strongest alone is often F3 (as strong as F2 in a fronted u), and a centroid is
    # pulled up by F3 when F2 sits at its low end.
    inner = db[1:-1]
    band = (bands["f2"] > 0)[1:-1, None]
    strongest = np.where(band, inner, -np.inf).max(0)
    peak = band & (inner >= db[:-2]) & (inner >= db[2:]) & (inner >= strongest - PEAK_DB)
    f2 = f[1:-1][np.argmax(peak, axis=0)]
    spread = _ramp(f2, *SPREAD_F2)
    rounded = _ramp(f2, *ROUND_F2) * _ramp(f1, *ROUND_F1)
    speech = level("speech")
    murmur = level("low") - level("high")
    # Vowel quality only means something where the vocal tract resonates (voiced and loud,
    # not a fricative's hiss); elsewhere the lips hold the shape they have.
    hiss = level("hiss") - level("f1")
    voiced = (_ramp(speech, SILENT_DB, SILENT_DB + 15) * (1 - _ramp(murmur, *MURMUR_DB))
              * (1 - _ramp(hiss, -20.0, -5.0)))
    width = np.clip(SHAPE_GAIN * (spread - rounded), -1.0, 1.0)
    closure = _ramp(murmur, *MURMUR_DB) * _ramp(speech, SILENT_DB - 5, SILENT_DB + 5)
    return (width.astype(np.float32), voiced.astype(np.float32), closure.astype(np.float32),
            speech.astype(np.float32))


def _dips(level: np.ndarray) -> np.ndarray:
    """Closure from short dips in the level: a stop's closure before its burst, a nasal's
    murmur, 10-20 dB under the syllables on either side within DIP_S."""
    reach = max(1, int(DIP_S * MEL_FRAMES_PER_SECOND))
    padded = np.pad(level, reach, mode="edge")
    window = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1)
    before, after = window[:, :reach].max(1), window[:, reach + 1:].max(1)
    around = np.minimum(before, after)          # loud on both sides: a dip, not an end
    depth = _ramp(around - level, *DIP_DB)
    return (depth * _ramp(around, SILENT_DB + 10, SILENT_DB + 20)).astype(np.float32)


def _blend(target: np.ndarray, start: float, attack: float, release: float,
           trust: np.ndarray | None = None) -> np.ndarray:
    """First-order follower: `attack` per step while |target| grows, `release` while it falls,
    each scaled by `trust` (where the target means nothing, the value holds)."""
    out = np.empty_like(target)
    value = start
    weights = np.ones_like(target) if trust is None else trust
    for i, (t, weight) in enumerate(zip(target, weights)):
        value += (t - value) * (attack if abs(t) > abs(value) else release) * weight
        out[i] = value
    return out


def chunk_offsets(chunks: np.ndarray, default: float = MEL_FRAMES_PER_SECOND / 25) -> np.ndarray:
    """Mel frames between the starts of consecutive chunks ((B-1,) ints), read from the chunks
    themselves (each overlaps the next): the batch does not say the frame rate. Where the
    overlap is ambiguous (silence) or absent (past the speech) the typical step is used."""
    count, _, span = chunks.shape
    found = np.full(max(count - 1, 0), -1, np.int64)
    for k in range(count - 1):
        a, b = chunks[k], chunks[k + 1]
        if np.ptp(b[:, 0]) == 0:        # a flat column matches anywhere
            continue
        for j in range(span):
            if np.array_equal(a[:, j:], b[:, :span - j]):
                found[k] = j
                break
    known = found[found > 0]
    step = int(np.median(known)) if known.size else max(1, round(default))
    return np.where(found > 0, found, step)


def shapes_from_chunks(chunks: np.ndarray, openness: np.ndarray) -> MouthShapes:
    """Mouth shapes for a batch of consecutive frames from their (B, 80, 16) mel chunks.

    Frame i's chunk starts at its own time, so the batch's mel track is each chunk up to
    where the next one starts, then the last chunk whole (what comes next). The blend runs
    over that track; a frame takes the mean over its own stretch, looking a little ahead.
    """
    count = len(chunks)
    if count == 0:
        return MouthShapes(np.zeros(0, np.float32), np.zeros(0, np.float32))
    steps = chunk_offsets(chunks)
    track = np.concatenate([c[:, :n] for c, n in zip(chunks[:-1], steps)] + [chunks[-1]],
                           axis=1)
    width, trust, closure, level = frame_targets(track)
    closure = np.maximum(closure, _dips(level))
    dt = 1.0 / MEL_FRAMES_PER_SECOND
    attack, release = 1 - np.exp(-dt / ATTACK_S), 1 - np.exp(-dt / RELEASE_S)
    width = _blend(width, float(width[0] * trust[0]), attack, release, trust)
    # Lips meet within ~30 ms and part at the burst at once: a closure never lingers into
    # the vowel after it.
    closure = _blend(closure, float(closure[0]), 1 - np.exp(-dt / CLOSE_S),
                     1 - np.exp(-dt / PART_S))
    own = int(steps.max()) if steps.size else MEL_STEP // 4
    starts = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    # Lips move before the sound they make: the frame's stretch, half of it ahead.
    index = np.minimum(starts[:, None] + own // 2 + np.arange(own)[None, :], track.shape[1] - 1)
    amplitude = np.clip(np.asarray(openness, np.float32) / 0.4, 0.0, 1.0)
    return MouthShapes((width[index].mean(1) * amplitude).astype(np.float32),
                       closure[index].mean(1).astype(np.float32))
