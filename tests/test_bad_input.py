"""Every kind of bad input gets a stable code and a message naming the input and the reason."""

import numpy as np
import pytest
from conftest import write_wav

from dhserve.engine.face import AnalysisCache
from dhserve.engine.media import read_frames
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.errors import InputError


@pytest.fixture
def attempt(tmp_path):
    def run(video, audio, **options):
        with pytest.raises(InputError) as err:
            render(video, audio, tmp_path / "out" / "o.mp4", RenderOptions(**options),
                   AnalysisCache(tmp_path / "cache"))
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
        return err.value
    return run


def test_missing_file(attempt, tmp_path, short_speech):
    err = attempt(tmp_path / "nope.mp4", short_speech)
    assert (err.code, err.field) == ("input.not_found", "video")
    assert "no such file" in err.reason


def test_empty_file(attempt, tmp_path, example_avatar):
    (tmp_path / "empty.wav").write_bytes(b"")
    err = attempt(example_avatar, tmp_path / "empty.wav")
    assert (err.code, err.field) == ("input.empty_file", "audio")


def test_not_media(attempt, tmp_path, short_speech):
    (tmp_path / "notes.mp4").write_text("these are meeting notes, not a video\n" * 20)
    err = attempt(tmp_path / "notes.mp4", short_speech)
    assert (err.code, err.field) == ("input.not_media", "video")


def test_corrupt_media(attempt, tmp_path, example_avatar, short_speech):
    data = example_avatar.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])   # index is at the front
    broken = bytearray(data)
    broken[4:8] = b"ftyp"
    broken[60:] = bytes(len(broken) - 60)                        # header kept, rest zeroed
    (tmp_path / "zeroed.mp4").write_bytes(bytes(broken))
    for name in ("cut.mp4", "zeroed.mp4"):
        err = attempt(tmp_path / name, short_speech)
        assert (err.code, err.field) == ("input.corrupt", "video"), name


def test_video_without_video_stream(attempt, short_speech):
    err = attempt(short_speech, short_speech)
    assert (err.code, err.field) == ("video.no_video_stream", "video")


def test_audio_without_audio_stream(attempt, example_avatar):
    err = attempt(example_avatar, example_avatar)
    assert (err.code, err.field) == ("audio.no_audio_stream", "audio")


def test_empty_audio_stream(attempt, tmp_path, example_avatar):
    err = attempt(example_avatar, write_wav(tmp_path / "none.wav", np.zeros(0)))
    assert err.code in ("audio.empty", "input.corrupt") and err.field == "audio"


def test_no_face_anywhere(attempt, tmp_path, short_speech):
    from dhserve.engine.media import Mp4Writer

    clip = tmp_path / "wall.mp4"
    with Mp4Writer(clip, 256, 256, 25, None, "ultrafast") as writer:
        for i in range(10):
            writer.write(np.full((256, 256, 3), 90 + i, np.uint8))
    err = attempt(clip, short_speech)
    assert (err.code, err.field) == ("video.no_face", "video")
    assert "no face found in any of 10 frames" in err.reason


@pytest.mark.parametrize("limit, code, field", [
    ({"max_video_seconds": 3}, "video.too_long", "video"),
    ({"max_audio_seconds": 1}, "audio.too_long", "audio"),
    ({"max_video_pixels": 320 * 240}, "video.too_large", "video"),
    ({"max_input_mb": 0.1}, "input.too_large", "video"),
])
def test_limits(attempt, example_avatar, short_speech, limit, code, field):
    err = attempt(example_avatar, short_speech, **limit)
    assert (err.code, err.field) == (code, field)
    assert "over the limit" in err.reason


def test_unknown_backend(attempt, example_avatar, short_speech):
    err = attempt(example_avatar, short_speech, backend="musetalk")
    assert (err.code, err.field) == ("options.unknown_backend", "backend")
    assert "available: classic" in err.reason


def test_silent_speech_is_fine_and_the_mouth_stays_shut(tmp_path, example_avatar,
                                                         template_frames):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(16000))
    result = render(example_avatar, silence, tmp_path / "o.mp4", RenderOptions(),
                    AnalysisCache(tmp_path / "cache"))
    assert result.frames == 25
    for out, template in zip(read_frames(result.path), template_frames):
        diff = np.abs(out.astype(int) - template.astype(int))
        assert diff.mean() < 2.0                         # only the codec's own noise
