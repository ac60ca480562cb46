"""The whole pipeline on the bundled example, checked the way a viewer would."""

import subprocess
import sys

import av
import numpy as np
import pytest

from dhserve.engine import audio
from dhserve.engine.face import AnalysisCache
from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.engine.face.landmarks import NOSE_TIP, mouth_opening
from dhserve.engine.frames import template_index
from dhserve.engine.media import read_frames
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.engine.progress import CallbackProgress
from dhserve.errors import Canceled


def _streams(path):
    with av.open(str(path)) as container:
        video, sound = container.streams.video, container.streams.audio
        return ([s.codec_context.name for s in video], [s.codec_context.name for s in sound],
                video[0].width, video[0].height, video[0].average_rate,
                float(container.duration / av.time_base), video[0].frames)


def test_output_is_h264_aac_of_the_speech_length(rendered_example, example_speech):
    result, _, _ = rendered_example
    speech_seconds = audio.decode_speech(example_speech).size / audio.SAMPLE_RATE
    vcodecs, acodecs, width, height, fps, duration, frames = _streams(result.path)
    assert vcodecs == ["h264"] and acodecs == ["aac"]
    assert (width, height, fps) == (512, 512, 25)
    assert abs(frames / 25 - speech_seconds) <= 1 / 25
    assert abs(duration - speech_seconds) <= 1 / 25 + 0.03   # + AAC's final frame padding
    assert result.frames == frames and not result.analysis_cached


def _analysis(cache):
    (entry,) = cache.directory.glob("*.npz")
    return cache.get(entry.name.split(".")[0])


def test_mouth_follows_speech(rendered_example, output_landmarks, example_speech):
    """Face Mesh re-detected on the output: inner-lip gap correlates with loudness."""
    opening = np.array([mouth_opening(p) if p is not None else np.nan
                        for p in output_landmarks])
    wav = audio.decode_speech(example_speech)
    loudness = 10 ** (audio.loudness_db(wav, 25, opening.size) / 20)   # RMS envelope
    seen = ~np.isnan(opening)
    assert seen.mean() > 0.95
    assert np.corrcoef(opening[seen], loudness[seen])[0, 1] >= 0.6
    # In the pause the mouth is shut: back at the template's own resting gap.
    level = audio.loudness_db(wav, 25, opening.size)
    pause = np.flatnonzero(level < -60)
    pause = pause[(pause > 60) & (pause < opening.size - 30)][5:]   # settled, mid-speech
    resting = np.median([mouth_opening(p) for p in _analysis(rendered_example[1]).landmarks])
    assert pause.size >= 15
    assert np.nanmedian(opening[pause]) < resting + 0.03
    assert np.nanmedian(opening[level > -30]) > np.nanmedian(opening[pause]) + 0.1


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def test_upper_face_is_untouched(rendered_example, template_frames):
    result, cache, _ = rendered_example
    analysis = _analysis(cache)
    scores = []
    for i, frame in enumerate(read_frames(result.path)):
        t = template_index(i, len(template_frames), "pingpong")
        nose_y = int(analysis.landmarks[t, NOSE_TIP, 1])
        scores.append(_psnr(frame[:nose_y], template_frames[t][:nose_y]))
    assert min(scores) >= 40.0


@pytest.mark.parametrize("loop", ["pingpong", "restart"])
def test_loop_modes_play_the_template_in_order(tmp_path, rendered_example, example_avatar,
                                               example_speech, template_frames, loop):
    _, cache, _ = rendered_example
    result = render(example_avatar, example_speech, tmp_path / "o.mp4", RenderOptions(loop=loop),
                    cache)
    assert result.analysis_cached
    n = len(template_frames)
    out = list(read_frames(result.path))
    for i in (n + 5, n + 40, len(out) - 1):
        t = template_index(i, n, loop)
        expected = (2 * n - 2 - i) if loop == "pingpong" else i - n
        assert t == expected
        top = slice(0, 150)   # forehead and eyes: untouched by the mouth
        assert _psnr(out[i][top], template_frames[t][top]) > 38
        assert _psnr(out[i][top], template_frames[(t + 12) % n][top]) < 34


def test_second_render_skips_detection(tmp_path, rendered_example, example_avatar,
                                       short_speech, monkeypatch):
    _, cache, _ = rendered_example

    def must_not_run(self, rgb):
        raise AssertionError("face detection ran although the template is cached")

    monkeypatch.setattr(MediaPipeFaceDetector, "detect", must_not_run)
    copy = tmp_path / "same-avatar-other-name.mp4"
    copy.write_bytes(example_avatar.read_bytes())
    result = render(copy, short_speech, tmp_path / "o.mp4", RenderOptions(), cache)
    assert result.analysis_cached and result.frames == 50


def test_progress_is_real_and_ordered(rendered_example):
    _, _, updates = rendered_example
    fractions = [f for f, _ in updates]
    stages = [s for _, s in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert stages[0] == "probing" and stages[-1] == "done"
    lip_sync = [f for f, s in updates if s == "lip-sync"]
    assert len(lip_sync) >= 294 // 16                       # at least one per batch
    assert len([s for s in stages if s == "analysing face"]) > 5


def test_cancel_stops_between_batches_and_leaves_no_file(tmp_path, rendered_example,
                                                         example_avatar, example_speech):
    _, cache, _ = rendered_example
    progress = CallbackProgress()
    seen = []

    def on_update(fraction, stage):
        seen.append(stage)
        if stage == "lip-sync":
            progress.cancel_event.set()

    progress.on_update = on_update
    with pytest.raises(Canceled):
        render(example_avatar, example_speech, tmp_path / "o.mp4", RenderOptions(), cache,
               progress)
    assert seen.count("lip-sync") == 1
    assert list(tmp_path.iterdir()) == []                   # no output, no partial file


def test_still_image_template(tmp_path, template_frames, short_speech):
    import cv2

    png = tmp_path / "portrait.jpg"
    cv2.imwrite(str(png), cv2.cvtColor(template_frames[0], cv2.COLOR_RGB2BGR))
    result = render(png, short_speech, tmp_path / "o.mp4", RenderOptions(),
                    AnalysisCache(tmp_path / "cache"))
    assert result.frames == 50 and (result.width, result.height) == (512, 512)
    frames = list(read_frames(result.path))
    changed = [np.abs(f.astype(int) - frames[0].astype(int)).max() for f in frames]
    assert max(changed) > 40                                # the mouth moves on a photo


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dhserve.cli", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300)


def test_cli_renders_with_a_summary(tmp_path, example_avatar, short_speech):
    done = _cli("--data-dir", str(tmp_path / "data"), "render", "--video", str(example_avatar),
                "--audio", str(short_speech), "--loop", "restart", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "data" / "results" / "avatar-short.mp4"
    assert out.is_file()
    assert "50 frames, 512x512 @ 25 fps, 2.00 s of video" in done.stdout
    assert list((tmp_path / "data" / "templates").glob("*.npz"))


def test_cli_reports_bad_input_without_a_traceback(tmp_path, short_speech):
    done = _cli("render", "--video", "missing.mp4", "--audio", str(short_speech),
                "--out", "o.mp4", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("error input.not_found: video: no such file: missing.mp4")
    assert "Traceback" not in done.stderr


def test_rotated_template_renders_upright(tmp_path, template_frames, short_speech):
    """Phones store portrait video sideways with a display rotation; the output is upright."""
    sideways = tmp_path / "phone.mp4"
    with av.open(str(sideways), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        stream.set_display_rotation(90)           # counter-clockwise, as players apply it
        for i, frame in enumerate(template_frames[:30]):
            stored = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame, -1)),
                                                format="rgb24")
            stored.pts = i
            container.mux(stream.encode(stored))
        container.mux(stream.encode(None))
    result = render(sideways, short_speech, tmp_path / "o.mp4", RenderOptions(),
                    AnalysisCache(tmp_path / "cache"))
    first = next(read_frames(result.path))
    top = slice(0, 150)
    assert _psnr(first[top], template_frames[0][top]) > 35   # upright, like the original
