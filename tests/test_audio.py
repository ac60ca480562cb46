"""Speech decoding and features."""

from pathlib import Path

import av
import numpy as np
import pytest
from conftest import write_wav

from dhserve.engine import audio

DATA = Path(__file__).parent / "data"


def _transcode(source: Path, target: Path, codec: str, rate: int) -> Path:
    samples = audio.decode_speech(source)
    with av.open(str(target), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                      rate=rate)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = 16000
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return target


@pytest.mark.parametrize("suffix, codec, rate", [
    ("mp3", "libmp3lame", 44100), ("m4a", "aac", 44100), ("ogg", "libopus", 48000),
    ("flac", "flac", 22050), ("wav", "pcm_s16le", 22050),
])
def test_common_formats_decode_to_16k_mono(tmp_path, example_speech, suffix, codec, rate):
    reference = audio.decode_speech(example_speech)
    path = _transcode(example_speech, tmp_path / f"speech.{suffix}", codec, rate)
    decoded = audio.decode_speech(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Same speech, same length (codecs add at most a few ms of padding).
    assert abs(decoded.size - reference.size) < 0.06 * audio.SAMPLE_RATE
    # Same loudness contour; lossy encoders may delay it by their priming (AAC: ~1024 samples).
    level = np.maximum(audio.loudness_db(decoded, 100, 1000), -60)
    expected = np.maximum(audio.loudness_db(reference, 100, 1000), -60)
    best = max(np.corrcoef(level[lag:], expected[:1000 - lag])[0, 1] for lag in range(6))
    assert best > 0.97


def test_mel_matches_librosa_reference():
    """Reference made with librosa 0.11 (Wav2Lip's recipe); stored so tests need no librosa."""
    ref = np.load(DATA / "librosa_mel_reference.npz")
    assert np.abs(audio.mel_basis() - ref["basis"]).max() < 1e-6
    mel = audio.mel_spectrogram(ref["wav"])
    assert mel.shape == ref["mel"].shape == (80, 61)
    assert np.abs(mel - ref["mel"]).max() < 1e-4


def test_mel_is_blockwise_identical():
    wav = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    assert np.allclose(audio.mel_spectrogram(wav, block=7), audio.mel_spectrogram(wav), atol=1e-4)


def test_mel_chunks_follow_the_wav2lip_contract():
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)   # 1.25 s at 80 frames/s
    chunks = audio.mel_chunks(mel, fps=25, start=0, count=40, speech_frames=35)
    assert chunks.shape == (40, 80, 16)
    assert np.array_equal(chunks[1], mel[:, 3:19])          # int(1 * 80 / 25) = 3
    assert np.array_equal(chunks[30], mel[:, 84:100])       # int(96) clamped to the end
    assert not chunks[35:].any()                           # past the speech: zeros


def test_openness_follows_speech_and_shuts_in_the_pause(example_speech):
    wav = audio.decode_speech(example_speech)
    n = audio.frame_count(wav.size, 25)
    openness = audio.mouth_openness(wav, 25, n)
    level = audio.loudness_db(wav, 25, n)
    assert openness.shape == (n,) and 0 <= openness.min() and openness.max() <= 1
    silent = level < -60
    pause = _longest_run(silent)                     # the example's 1.2 s pause
    assert pause.stop - pause.start >= 25
    settled = slice(pause.start + 4, pause.stop)     # after the jaw's release time
    assert openness[settled].max() < 0.02
    assert openness[level > -30].mean() > 0.5


def test_silence_keeps_the_mouth_shut(tmp_path):
    wav = audio.decode_speech(write_wav(tmp_path / "silence.wav", np.zeros(32000)))
    assert not audio.mouth_openness(wav, 25, 50).any()


def test_frame_count_ends_within_one_frame():
    for seconds in (0.5, 2.0, 11.7596, 20.013):
        n = audio.frame_count(int(seconds * 16000), 25)
        assert abs(n / 25 - seconds) <= 1 / 25


def _longest_run(flags: np.ndarray) -> slice:
    best, start = slice(0, 0), None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best.stop - best.start:
                best = slice(start, i)
            start = None
    return best
