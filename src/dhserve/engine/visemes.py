"""Mouth shapes from the speech itself: lip width (spread ↔ rounded) and lip closure per frame.

No model and no language: the shapes come from the Wav2Lip mel spectrogram the pipeline
already computes. Formant-like estimates per 12.5 ms mel frame carry the vowel quality:
F1 (the power centroid between 200 and 800 Hz: low for i/u, high for a), F2 (the lowest
strong peak between 650 and 2900 Hz: high for i/e, low for u/o) and F3 (the next strong peak
above F2). A high F2 spreads the lips, unless F3 is low too (a front rounded ü, Mandarin yu);
a low F2 with a low F1 rounds them; a (high F1) is neutral. Bilabial closure (m, b, p) is a
voiced murmur with almost nothing above 500 Hz, or a short dip in the level between two
syllables (the closure before a burst, a nasal murmur), and shuts the lips whatever the
loudness (a t or d's closure, the tongue's, shuts them too: the level cannot tell them
apart, and neither could the burst's spectrum on espeak-ng's voices). The targets then blend
as lips do: they move towards a new shape in ~40 ms and leave it in ~80 ms, and a quiet
syllable shapes the lips less.

The pipeline hands a backend one batch of frames at a time; `ShapeTracker` carries the blend
from one batch of a speech to the next, so the lips never restart at a batch boundary.
"""

from __future__ import annotations

import threading
from collections import deque
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

F1_BAND, F2_BAND = (200.0, 800.0), (650.0, 2900.0)   # a back u's F2 sits at 700-800 Hz
F2_ABOVE_F1 = 250.0            # (Hz) F2 lies this far above F1 at least: an e's F1 at 650 Hz
                               # is no F2
PEAK_DB = 8.0
SHAPE_GAIN = 2.0   # a vowel half way to i (or u) already shapes the lips fully
LOW_BAND, HIGH_BAND = (55.0, 500.0), (600.0, 4000.0)
SPREAD_F2 = (1700.0, 2200.0)   # F2 (Hz) from neutral to fully spread
ROUND_F2 = (1750.0, 1250.0)    # F2 (Hz) from neutral to fully rounded ...
ROUND_F1 = (600.0, 450.0)      # ... while F1 (Hz) is this low (an open a is never rounded)
FRONT_ROUND_F2 = (1500.0, 1700.0)   # an F2 this high (a front vowel) with ...
FRONT_ROUND_F3 = (2480.0, 2330.0)   # ... F3 this low is a rounded ü (Mandarin yu, French u,
                                    # German ü: 2250-2400), not an i or e (2500+)
F3_GAP, F3_TOP = 300.0, 3500.0     # F3: the next strong peak this far above F2 (nearer: a
                                   # harmonic of F2 itself), under this
MURMUR_DB = (16.0, 24.0)       # low band over high band (dB): a nasal murmur / lips shut
DIP_S, DIP_DB = 0.1, (8.0, 16.0)   # a dip this deep (dB) within this far of loud speech shuts
DIP_AROUND = (5.0, 15.0)       # (dB over SILENT_DB) speech this loud on both sides of a dip
ATTACK_S, RELEASE_S = 0.04, 0.08   # time constants of the blend towards / away from a shape
CLOSE_S, PART_S = 0.015, 0.015     # ... and of the lips meeting / parting
SILENT_DB = -62.0              # (dB under Wav2Lip's reference) no speech here
PAUSE_DB = MIN_LEVEL_DB + 10   # no sound at all (a synthetic voice's pauses) ...
REST_S = 0.2                   # ... for this long: the lips are at rest (neutral, free)


@dataclass(frozen=True, eq=False)        # states are told apart by identity
class ShapeState:
    """Where the lips were over a batch's last mel chunk: the next batch of the same speech
    starts inside that chunk (its first chunk overlaps it) and goes on from there."""

    chunk: np.ndarray     # (80, 16) the batch's last mel chunk
    width: np.ndarray     # (16,) the width follower after each of its columns
    closure: np.ndarray   # (16,) the closure follower after each of its columns
    level: np.ndarray     # (HISTORY + 16,) speech level (dB) up to its end

    def resume(self, chunk: np.ndarray) -> tuple[float, float, np.ndarray] | None:
        """Width, closure and the level history just before `chunk` when it continues this
        state's chunk; None when it does not (another speech, or silence: ambiguous)."""
        j = _overlap(self.chunk, chunk)
        if j == 0:
            return None
        return float(self.width[j - 1]), float(self.closure[j - 1]), self.level[j:j + HISTORY]


@dataclass(frozen=True)
class MouthShapes:
    """Per video frame: `width` -1 (rounded) .. 0 (neutral) .. +1 (spread), scaled by how
    loud the syllable is; `closure` 0 (free) .. 1 (lips pressed together); `end`: where the
    lips were at the end of the batch, for the next one."""

    width: np.ndarray
    closure: np.ndarray
    end: ShapeState | None = None


@dataclass(frozen=True)
class FrameTargets:
    """Per mel frame of a track: the shape the lips aim for and what the sound is."""

    width: np.ndarray     # -1 rounded .. +1 spread
    trust: np.ndarray     # 0..1: how far the width means anything (a loud voiced vowel)
    closure: np.ndarray   # 0..1: a strong nasal murmur
    level: np.ndarray     # dB of the speech band (200-4000 Hz)


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


def frame_targets(mel: np.ndarray) -> FrameTargets:
    """The targets of each mel frame of an (80, T) block."""
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
    inner, peaks_f = db[1:-1], f[1:-1, None]
    band = ((bands["f2"] > 0)[1:-1, None]) & (peaks_f > f1 + F2_ABOVE_F1)
    strongest = np.where(band, inner, -np.inf).max(0)
    strong = (inner >= db[:-2]) & (inner >= db[2:]) & (inner >= strongest - PEAK_DB)
    f2 = peaks_f[np.argmax(band & strong, axis=0), 0]
    above = strong & (peaks_f > f2 + F3_GAP) & (peaks_f < F3_TOP)
    f3 = np.where(above.any(0), peaks_f[np.argmax(above, axis=0), 0], F3_TOP)
    front_round = _ramp(f2, *FRONT_ROUND_F2) * _ramp(f3, *FRONT_ROUND_F3)
    spread = _ramp(f2, *SPREAD_F2) * (1 - front_round)
    rounded = np.maximum(_ramp(f2, *ROUND_F2) * _ramp(f1, *ROUND_F1), front_round)
    speech = level("speech")
    murmur = level("low") - level("high")
    # Vowel quality only means something where the vocal tract resonates (voiced and loud,
    # not a fricative's hiss); elsewhere the lips hold the shape they have.
    hiss = level("hiss") - level("f1")
    voiced = (_ramp(speech, SILENT_DB, SILENT_DB + 15) * (1 - _ramp(murmur, *MURMUR_DB))
              * (1 - _ramp(hiss, -20.0, -5.0)))
    width = np.clip(SHAPE_GAIN * (spread - rounded), -1.0, 1.0)
    closure = _ramp(murmur, *MURMUR_DB) * _ramp(speech, SILENT_DB - 5, SILENT_DB + 5)
    width, voiced, closure, speech = (x.astype(np.float32)
                                      for x in (width, voiced, closure, speech))
    return FrameTargets(width, voiced, closure, speech)


DIP_REACH = max(1, int(DIP_S * MEL_FRAMES_PER_SECOND))   # mel frames on either side
REST_FRAMES = max(1, int(REST_S * MEL_FRAMES_PER_SECOND))
HISTORY = max(DIP_REACH, REST_FRAMES)   # mel frames of level a batch needs from before it


def _dips(level: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Closure from short dips in the level: a stop's closure before its burst, a nasal's
    murmur, 8-16 dB under the syllables on either side within DIP_S. `history`: the
    levels before `level` (the previous batch's), or the first level repeated."""
    reach = DIP_REACH
    padded = np.concatenate([history[-reach:], level, np.repeat(level[-1:], reach)])
    window = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1)
    before, after = window[:, :reach].max(1), window[:, reach + 1:].max(1)
    around = np.minimum(before, after)          # loud on both sides: a dip, not an end
    depth = _ramp(around - level, *DIP_DB)
    loud = _ramp(around, SILENT_DB + DIP_AROUND[0], SILENT_DB + DIP_AROUND[1])
    return (depth * loud).astype(np.float32)


def _blend(target: np.ndarray, start: float, attack: float, release: float,
           trust: np.ndarray | None = None, rest: np.ndarray | None = None) -> np.ndarray:
    """First-order follower: `attack` per step while |target| grows, `release` while it falls,
    each scaled by `trust` (where the target means nothing, the value holds); where `rest`
    (a long pause) the value is the target at once."""
    out = np.empty_like(target)
    value = start
    weights = np.ones_like(target) if trust is None else trust
    resting = np.zeros(target.shape, bool) if rest is None else rest
    for i, (t, weight, still) in enumerate(zip(target, weights, resting)):
        value = t if still else value + (t - value) * (attack if abs(t) > abs(value)
                                                         else release) * weight
        out[i] = value
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> int:
    """Mel frames from the start of chunk `a` to the start of chunk `b` when `b` continues
    `a` (1..15); 0 when it does not, or cannot be told (silence matches anywhere)."""
    span = a.shape[1]
    for j in range(1, span):
        shared = b[:, :span - j]
        if np.ptp(shared) > 0 and np.array_equal(a[:, j:], shared):
            return j
    return 0


def chunk_offsets(chunks: np.ndarray, default: float = MEL_FRAMES_PER_SECOND / 25) -> np.ndarray:
    """Mel frames between the starts of consecutive chunks ((B-1,) ints), read from the chunks
    themselves (each overlaps the next): the batch does not say the frame rate. Where the
    overlap is ambiguous (silence) or absent (past the speech) the typical step is used."""
    found = np.array([_overlap(a, b) for a, b in zip(chunks[:-1], chunks[1:])], np.int64)
    known = found[found > 0]
    step = int(np.median(known)) if known.size else max(1, round(default))
    return np.where(found > 0, found, step)


def shapes_from_chunks(chunks: np.ndarray, openness: np.ndarray,
                       before: ShapeState | None = None) -> MouthShapes:
    """Mouth shapes for a batch of consecutive frames from their (B, 80, 16) mel chunks.

    Frame i's chunk starts at its own time, so the batch's mel track is each chunk up to
    where the next one starts, then the last chunk whole (what comes next). The blend runs
    over that track, from where `before` (the previous batch's end) left the lips when the
    first chunk continues it; a frame takes the mean over its own stretch, looking a little
    ahead.
    """
    count = len(chunks)
    if count == 0:
        return MouthShapes(np.zeros(0, np.float32), np.zeros(0, np.float32))
    steps = chunk_offsets(chunks)
    track = np.concatenate([c[:, :n] for c, n in zip(chunks[:-1], steps)] + [chunks[-1]],
                           axis=1)
    aim = frame_targets(track)
    resumed = before.resume(chunks[0]) if before is not None else None
    history = np.repeat(aim.level[:1], HISTORY) if resumed is None else resumed[2]
    levels = np.concatenate([history, aim.level])
    # After REST_S with no sound at all the lips are at rest, however the batches fall: a
    # batch that starts in such a pause starts where one long batch would be.
    silent = np.lib.stride_tricks.sliding_window_view(levels < PAUSE_DB, REST_FRAMES)
    rest = silent.all(1)[-aim.level.size:]
    closure = np.maximum(aim.closure, _dips(aim.level, history))
    width0, closure0 = ((float(aim.width[0] * aim.trust[0]), float(closure[0]))
                        if resumed is None else resumed[:2])
    dt = 1.0 / MEL_FRAMES_PER_SECOND
    attack, release = 1 - np.exp(-dt / ATTACK_S), 1 - np.exp(-dt / RELEASE_S)
    width = _blend(np.where(rest, 0.0, aim.width), width0, attack, release, aim.trust, rest)
    # Lips meet within ~15 ms (a Mandarin b's closure lasts ~30 ms) and part at the burst at
    # once: a closure never lingers into the vowel after it.
    closure = _blend(closure, closure0, 1 - np.exp(-dt / CLOSE_S), 1 - np.exp(-dt / PART_S),
                     rest=rest)
    own = int(steps.max()) if steps.size else MEL_STEP // 4
    starts = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    # Lips move before the sound they make: the frame's stretch, half of it ahead.
    index = np.minimum(starts[:, None] + own // 2 + np.arange(own)[None, :], track.shape[1] - 1)
    amplitude = np.clip(np.asarray(openness, np.float32) / 0.4, 0.0, 1.0)
    end = ShapeState(chunks[-1].copy(), width[-MEL_STEP:].copy(), closure[-MEL_STEP:].copy(),
                     levels[-(HISTORY + MEL_STEP):].copy())
    return MouthShapes((width[index].mean(1) * amplitude).astype(np.float32),
                       closure[index].mean(1).astype(np.float32), end)


class ShapeTracker:
    """Mouth shapes batch after batch, each batch going on from where the previous batch of
    the same speech left the lips. The state is found by the speech itself (a batch's first
    chunk continues the previous batch's last one), so one tracker serves any number of
    renders at once, from any threads, and a new render starts afresh."""

    def __init__(self, keep: int = 64):
        self._ends: deque[ShapeState] = deque(maxlen=keep)   # renders in flight, newest last
        self._lock = threading.Lock()

    def shapes(self, chunks: np.ndarray, openness: np.ndarray) -> MouthShapes:
        before = None
        if len(chunks):
            with self._lock:
                for state in reversed(self._ends):
                    if state.resume(chunks[0]) is not None:
                        before = state
                        self._ends.remove(state)
                        break
        shapes = shapes_from_chunks(chunks, openness, before)
        if shapes.end is not None:
            with self._lock:
                self._ends.append(shapes.end)
        return shapes
