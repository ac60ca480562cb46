"""Probe and MP4 writing through PyAV."""

from fractions import Fraction

import av
import numpy as np

from dhserve.engine import media


def test_probe_describes_the_example(example_avatar, example_speech):
    info = media.probe(example_avatar, "video")
    assert info.video.codec == "h264" and (info.video.width, info.video.height) == (512, 512)
    assert info.video.fps == Fraction(25) and not info.video.is_image
    assert abs(info.duration - 7.0) < 0.05 and info.audio is None
    speech = media.probe(example_speech, "audio")
    assert speech.video is None and speech.audio.channels == 1
    assert abs(speech.audio.duration - 11.76) < 0.05


def test_writer_makes_faststart_h264_aac_of_the_speech_length(tmp_path, short_speech):
    out = tmp_path / "clip.mp4"
    frames = 50   # 2.0 s at 25 fps, the length of short_speech
    with media.Mp4Writer(out, 320, 241, Fraction(25), short_speech, "ultrafast", 18) as writer:
        for i in range(frames):
            writer.write(np.full((241, 320, 3), i * 5, np.uint8))
    with av.open(str(out)) as container:
        (video,), (sound,) = container.streams.video, container.streams.audio
        assert video.codec_context.name == "h264" and sound.codec_context.name == "aac"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.width, video.height) == (320, 240)          # odd height made even
        assert video.frames == frames
        assert abs(float(sound.duration * sound.time_base) - 2.0) <= 1 / 25
    head = out.read_bytes()[:200_000]
    assert head.index(b"moov") < head.index(b"mdat")              # faststart: index first


def test_still_image_is_a_template(tmp_path, template_frames):
    import cv2

    png = tmp_path / "portrait.png"
    cv2.imwrite(str(png), cv2.cvtColor(template_frames[0], cv2.COLOR_RGB2BGR))
    info = media.probe(png, "video")
    assert info.video.is_image and info.video.frame_count == 1
    assert (info.video.width, info.video.height) == (512, 512)
    (frame,) = list(media.read_frames(png))
    assert np.array_equal(frame, template_frames[0])


def test_encoder_failure_reaches_the_caller(tmp_path):
    """The encoder runs on its own thread; its errors must surface, not hang or vanish."""
    import cv2
    import pytest

    writer = media.Mp4Writer(tmp_path / "bad.mp4", 64, 64, Fraction(25), None, "ultrafast")
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.write(np.zeros((64, 64, 3), np.float64))          # not an 8-bit image
    with pytest.raises(cv2.error):
        for _ in range(50):
            writer.write(np.zeros((64, 64, 3), np.uint8))
        writer.close()
    writer.abort()


def test_probing_loads_neither_opencv_nor_the_writer():
    """The web tier probes inputs at submit: dhserve.engine.probe needs PyAV only (no
    OpenCV, numpy, frame reading or writer), and each media module imports on its own."""
    import subprocess
    import sys

    statement = ("import sys\nimport dhserve.engine.probe\n"
                 "print([m for m in ('cv2', 'numpy', 'dhserve.engine.rgb_frames', "
                 "'dhserve.engine.mp4_writer') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    for module in ("media_input", "image_header", "probe", "rgb_frames", "mp4_writer"):
        statement = f"import dhserve.engine.{module}"       # each loads on its own
        subprocess.run([sys.executable, "-c", statement], timeout=60, check=True)
