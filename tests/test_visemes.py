"""Mouth shapes from the speech: vowels with known formants, and espeak-ng sentences (English
and Mandarin) rendered by the classic backend and measured by landmarks re-detected on the
output."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from dhserve.engine import audio
from dhserve.engine.face import analyse_frames
from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.engine.face.landmarks import MOUTH_LEFT, MOUTH_RIGHT, mouth_opening
from dhserve.engine.lipsync.base import FrameBatch
from dhserve.engine.lipsync.classic import ClassicLipSync
from dhserve.engine.visemes import MouthShapes, ShapeTracker, chunk_offsets, shapes_from_chunks
from test_classic import InnerLips

FPS = 25.0


def vowel(f1: float, f2: float, seconds: float = 0.6, f0: float = 120.0) -> np.ndarray:
    """A glottal pulse train through three two-pole formant resonators (F3 at 2600 Hz)."""
    rate = audio.SAMPLE_RATE
    x = np.zeros(int(seconds * rate))
    x[::int(rate / f0)] = 1.0
    for f, bandwidth in ((f1, 80.0), (f2, 100.0), (2600.0, 150.0)):
        r = np.exp(-np.pi * bandwidth / rate)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / rate), r * r
        y = np.zeros_like(x)
        y1 = y2 = 0.0
        for n, v in enumerate(x):
            y1, y2 = (1 - r) * v - a1 * y1 - a2 * y2, y1
            y[n] = y1
        x = y
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def speech_batches(wav: np.ndarray, fps: float = FPS, size: int = 16):
    """What the pipeline hands a needs_mel backend: openness and mel chunks, batch by batch."""
    total = audio.frame_count(wav.size, fps)
    openness = audio.mouth_openness(wav, fps, total)
    mel = audio.mel_spectrogram(wav)
    for start in range(0, total, size):
        count = min(size, total - start)
        yield openness[start:start + count], audio.mel_chunks(mel, fps, start, count, total)


def speech_shapes(wav: np.ndarray, size: int = 16) -> MouthShapes:
    """The shapes the classic backend gives the speech, batch after batch."""
    tracker = ShapeTracker()
    parts = [tracker.shapes(chunks, opening) for opening, chunks in speech_batches(wav, size=size)]
    return MouthShapes(np.concatenate([p.width for p in parts]),
                       np.concatenate([p.closure for p in parts]))


def widths(wav: np.ndarray) -> np.ndarray:
    return speech_shapes(wav).width


def closure_events(wav: np.ndarray) -> int:
    """How many times the lips shut: peaks of the closure of at least 0.45."""
    c = np.pad(speech_shapes(wav).closure, 1)
    return int(((c[1:-1] >= 0.45) & (c[1:-1] >= c[:-2]) & (c[1:-1] > c[2:])).sum())


@pytest.mark.parametrize(("name", "f1", "f2", "sign"),
                         [("i", 280, 2250, 1), ("u", 310, 870, -1), ("a", 700, 1200, 0)])
def test_vowel_with_known_formants_gets_its_width(name, f1, f2, sign):
    middle = widths(vowel(f1, f2))[4:-4]
    if sign:
        assert np.median(middle) * sign > 0.3, (name, middle)
    else:
        assert np.abs(np.median(middle)) < 0.15, (name, middle)


def test_chunk_offsets_are_read_from_the_chunks():
    mel = audio.mel_spectrogram(vowel(700, 1200, seconds=1.0))
    for fps in (25.0, 30.0):
        chunks = audio.mel_chunks(mel, fps, 0, 10, 20)
        expected = np.diff([int(i * 80 / fps) for i in range(10)])
        assert np.array_equal(chunk_offsets(chunks), expected)


def test_batches_go_on_where_the_previous_one_left_the_lips(example_speech):
    """The pipeline hands the backend 16 frames at a time: the lips must not restart at each
    batch. The example speech with a recording's noise floor (its pauses are digital zeros,
    where no batch can tell which speech it continues)."""
    wav = audio.decode_speech(example_speech)
    wav = wav + np.random.default_rng(0).normal(0, 1e-4, wav.size).astype(np.float32)
    whole = speech_shapes(wav, size=10_000)
    batched = speech_shapes(wav, size=16)
    inside = slice(0, -5)    # the last 200 ms of chunks are clamped to the speech's end
    assert np.abs(batched.width - whole.width)[inside].max() < 1e-4
    assert np.abs(batched.closure - whole.closure)[inside].max() < 1e-4
    fresh = np.concatenate([shapes_from_chunks(chunks, opening).width
                            for opening, chunks in speech_batches(wav)])
    assert np.abs(fresh - whole.width).max() > 0.3     # what restarting at each batch did


def speak(work, voice: str, texts: dict[str, str]) -> dict[str, np.ndarray]:
    """espeak-ng's speech of each text, 16 kHz; skipped, saying why, without espeak-ng or
    the voice."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no sentences")
    voices = subprocess.run(["espeak-ng", f"--voices={voice.split('-')[0]}"], check=True,
                            capture_output=True, text=True).stdout.split()
    if voice not in voices:
        pytest.skip(f"espeak-ng has no {voice} voice")
    out = {}
    for name, text in texts.items():
        path = work / f"{voice}-{name}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        out[name] = audio.decode_speech(path)
    return out


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    return speak(tmp_path_factory.mktemp("espeak"), "en",
                 {"spread": "see me, three green keys", "rounded": "who knew, two blue shoes",
                  "bilabial": "mama bought a pot of beans"})


@pytest.fixture(scope="module")
def mandarin(tmp_path_factory):
    """Mandarin in pinyin with tone numbers: espeak-ng's cmn voice reads many common
    characters (妈, 一, 西) letter by letter in English from its small dictionary, so the
    cmn-latn-pinyin voice, the same Mandarin phonemes, reads the pinyin instead."""
    return speak(tmp_path_factory.mktemp("espeak-cmn"), "cmn-latn-pinyin",
                 {"spread": "yi1 qi1 yi1, xi1 li3 di4 yi1",              # 一七一，西里地一
                  "rounded": "wu3 lu4 yu2, gu3 wu3 lu4",                 # 五路鱼，古五路
                  "front-rounded": "yu2 lü4 ju1 xu1",                    # 鱼绿居需
                  "bilabial": "ma1 ma1 mai3 mian4 bao1, ba1 ba1 bu4 mai3"})  # 妈妈买面包，爸爸不买


def render(frames: list[np.ndarray], landmarks: np.ndarray, wav: np.ndarray):
    """The backend over the speech as the pipeline drives it; frames loop over the template."""
    backend = ClassicLipSync()
    out, opened, done = [], [], 0
    for openness, chunks in speech_batches(wav):
        index = [(done + k) % len(frames) for k in range(len(openness))]
        batch = FrameBatch([frames[i] for i in index], landmarks[index], openness, chunks)
        out += backend.animate(batch)
        opened.append(openness)
        done += len(openness)
    return out, np.concatenate(opened), [i % len(frames) for i in range(done)]


def measured_width(frames, detector) -> np.ndarray:
    result = []
    for frame in frames:
        points = detector.detect(frame).landmarks
        result.append(np.linalg.norm(points[MOUTH_RIGHT] - points[MOUTH_LEFT]))
    return np.array(result)


def output_widths(frames: list[np.ndarray], speech: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean mouth width while speaking (re-detected on the output, relative to the template's
    own) of each speech; checks on the way that nothing above the nose moved."""
    landmarks = analyse_frames(frames).landmarks
    detector = MediaPipeFaceDetector()
    try:
        base = measured_width(frames, detector)
        width = {}
        for name in ("spread", "rounded"):
            out, openness, index = render(frames, landmarks, speech[name])
            speaking = openness > 0.3
            measured = measured_width(out, detector) / base[index]
            width[name] = float(np.mean(measured[speaking]))
            top = int(landmarks[:, 1, 1].min()) - 10          # above the nose tip
            for i, frame in zip(index, out):
                assert np.abs(frame[:top].astype(int) - frames[i][:top]).mean() < 1.0
    finally:
        detector.close()
    return width


@pytest.mark.parametrize("moving", [False, True], ids=["still", "moving"])
def test_spread_speech_is_wider_than_rounded_on_the_output(sentences, template_frames, moving):
    width = output_widths(template_frames[:60] if moving else template_frames[:1], sentences)
    assert width["spread"] >= 1.10 * width["rounded"], width


def test_mandarin_spread_rounded_and_bilabials(mandarin, template_frames):
    """yi qi xi spread the lips, wu lu gu round them, and so does the ü of yu lü ju xu (an F2
    as high as an e's, but a low F3), and ma mai mian bao ba bu shut them."""
    assert closure_events(mandarin["bilabial"]) >= 5          # of 9 m/b
    assert closure_events(mandarin["rounded"]) <= 1           # no lips in wu lu yu gu
    assert np.mean(widths(mandarin["spread"])) > 0.5
    assert np.mean(widths(mandarin["rounded"])) < -0.5
    assert np.mean(widths(mandarin["front-rounded"])) < -0.5
    width = output_widths(template_frames[:1], mandarin)
    assert width["spread"] >= 1.10 * width["rounded"], width


def test_steady_vowels_stay_open_and_bilabials_close(sentences):
    for f1, f2 in ((280, 2250), (310, 870), (700, 1200)):
        wav = vowel(f1, f2)
        assert speech_shapes(wav).closure[4:-4].max() < 0.2

    assert closure_events(sentences["bilabial"]) >= 4      # m-a-m-a b-ought p-ot (of) b-eans
    assert closure_events(sentences["rounded"]) <= 2       # who knew, two b-lue shoes


def test_opening_follows_loudness_and_shuts_in_pauses(sentences, template_frames):
    frames = template_frames[:1]
    landmarks = analyse_frames(frames).landmarks
    wav = np.concatenate([sentences["bilabial"], np.zeros(8000, np.float32),
                          sentences["spread"]])
    out, openness, _ = render(frames, landmarks, wav)
    detector = MediaPipeFaceDetector()
    try:
        shut = mouth_opening(detector.detect(frames[0]).landmarks)
        opening = []
        for frame in out:
            detector.reset()                 # each frame on its own: no tracking lag
            opening.append(mouth_opening(detector.detect(frame).landmarks))
        opening = np.array(opening)
    finally:
        detector.close()
    level = audio.loudness_db(wav, FPS, len(out))
    loud = np.clip((level - level.max() + 40) / 40, 0, 1)
    assert np.corrcoef(opening, loud)[0, 1] >= 0.6
    assert np.all(opening[openness < 0.02] < shut + 0.03)


def test_bilabials_press_the_smiling_templates_lips_shut(sentences, template_frames):
    """The example avatar's lips are parted at rest: where the backend shuts the lips (m-a-m-a
    b-ought p-ot) the output's lips meet, and where it does not they stay apart."""
    frames = template_frames[:1]
    wav = sentences["bilabial"]
    out, openness, _ = render(frames, analyse_frames(frames).landmarks, wav)
    closure = speech_shapes(wav).closure
    lips = InnerLips()
    try:
        rest = lips.gap(frames[0])
        gap = np.array([lips.gap(frame) for frame in out]) / rest
    finally:
        lips.close()
    shut = closure >= 0.8
    assert shut.sum() >= 3, closure
    assert np.all(gap[shut] < 0.25), (gap[shut], closure[shut])
    free = (closure < 0.1) & (openness > 0.3)
    assert np.all(gap[free] > 1.0), gap[free]
