"""Media that real users send and that once went wrong: each is built here with PyAV."""

import threading
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import small_tmpfs

from dhserve.engine import media
from dhserve.engine.face import AnalysisCache
from dhserve.engine.face.detect import MediaPipeFaceDetector
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.errors import InputError


def _encode(path, frames, codec="libx264", fmt=None, pix="yuv420p", rate=25,
            full_range=False):
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix
        if full_range:
            stream.codec_context.color_range = 2
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pix, dst_color_range=2 if full_range else None)
            if full_range:
                frame.color_range = 2
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _mean_error(a, b):
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_full_range_video_keeps_its_colours(tmp_path, template_frames):
    clip = _encode(tmp_path / "full.webm", template_frames[:3], "libvpx-vp9", "webm",
                   full_range=True)
    decoded = next(media.read_frames(clip))
    assert _mean_error(decoded, template_frames[0]) < 3.0     # not contrast-stretched


def test_mjpeg_video_is_a_video_not_a_still(tmp_path, template_frames):
    clip = _encode(tmp_path / "cam.mkv", template_frames[:20], "mjpeg", "matroska",
                   pix="yuvj420p", rate=10)
    info = media.probe(clip, "video")
    assert not info.video.is_image and info.video.fps == 10
    assert len(list(media.read_frames(clip))) == 20


def test_resolution_change_midstream_keeps_the_first_size(tmp_path, template_frames):
    import cv2

    big = _encode(tmp_path / "a.h264", template_frames[:10], fmt="h264")
    small = [cv2.resize(f, (384, 384)) for f in template_frames[10:20]]
    second = _encode(tmp_path / "b.h264", small, fmt="h264")
    joined = tmp_path / "joined.h264"
    joined.write_bytes(big.read_bytes() + second.read_bytes())
    frames = list(media.read_frames(joined))
    assert len(frames) == 20 and {f.shape for f in frames} == {(512, 512, 3)}


def test_template_without_declared_duration_still_meets_the_limit(tmp_path, template_frames,
                                                                  short_speech):
    raw = _encode(tmp_path / "raw.h264", template_frames[:50], fmt="h264")   # 2 s, no index
    assert media.probe(raw, "video").video.duration == 0.0
    with pytest.raises(InputError) as err:
        render(raw, short_speech, tmp_path / "o.mp4", RenderOptions(max_video_seconds=1),
               AnalysisCache(tmp_path / "cache"))
    assert err.value.code == "video.too_long"


def test_damaged_cache_entry_is_analysed_again(tmp_path, rendered_example, example_avatar,
                                               short_speech):
    _, cache, _ = rendered_example
    (entry,) = cache.directory.glob("*.npz")
    copy = AnalysisCache(tmp_path / "cache")
    copy.directory.mkdir()
    (copy.directory / entry.name).write_bytes(entry.read_bytes()[:3000])   # cut short
    result = render(example_avatar, short_speech, tmp_path / "o.mp4", RenderOptions(), copy)
    assert not result.analysis_cached and result.frames == 50
    assert copy.get(entry.name.split(".")[0]) is not None                # healed


def test_two_deliveries_of_one_job_both_finish(tmp_path, rendered_example, example_avatar,
                                               short_speech):
    """At-least-once delivery: duplicate runs never share a temporary file."""
    _, cache, _ = rendered_example
    out, errors = tmp_path / "job-r.mp4", []

    def deliver():
        try:
            render(example_avatar, short_speech, out, RenderOptions(), cache)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    runs = [threading.Thread(target=deliver) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["job-r.mp4"]          # no .part left
    assert media.probe(out, "out").video.frame_count == 50


def test_output_that_is_a_directory_is_refused_before_rendering(tmp_path, example_avatar,
                                                                short_speech, monkeypatch):
    monkeypatch.setattr(MediaPipeFaceDetector, "detect", lambda *a: pytest.fail("rendered"))
    (tmp_path / "outdir").mkdir()
    with pytest.raises(InputError) as err:
        render(example_avatar, short_speech, tmp_path / "outdir", RenderOptions())
    assert (err.value.code, err.value.field) == ("output.invalid", "out")


@pytest.mark.parametrize("choice", [{"loop": "bounce"}, {"multiple_faces": "all"},
                                    {"x264_preset": "turbo"}, {"crf": 60}])
def test_bad_job_options_name_the_option(choice):
    with pytest.raises(InputError) as err:
        RenderOptions(**choice)
    assert err.value.code == "options.invalid" and err.value.field == next(iter(choice))


def test_unknown_backend_is_refused_before_face_analysis(tmp_path, example_avatar,
                                                         short_speech, monkeypatch):
    monkeypatch.setattr(MediaPipeFaceDetector, "detect", lambda *a: pytest.fail("analysed"))
    with pytest.raises(InputError) as err:
        render(example_avatar, short_speech, tmp_path / "o.mp4", RenderOptions(backend="nope"),
               AnalysisCache(tmp_path / "cache"))
    assert err.value.code == "options.unknown_backend"


@pytest.mark.parametrize("loop", ["restart", "pingpong"])
def test_still_image_loops_in_both_modes(tmp_path, template_frames, short_speech, loop):
    import cv2

    png = tmp_path / "portrait.png"
    cv2.imwrite(str(png), cv2.cvtColor(template_frames[0], cv2.COLOR_RGB2BGR))
    result = render(png, short_speech, tmp_path / "o.mp4", RenderOptions(loop=loop),
                    AnalysisCache(tmp_path / "cache"))
    assert result.frames == 50 and result.fps == Fraction(25)


# -- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 300 KB file system (tmpfs) for the output folder."""
    with small_tmpfs(tmp_path / "disk", "300k") as disk:
        yield disk


def _fill(disk, leave_bytes: int):
    import os

    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    (disk / "filler").write_bytes(bytes(max(free - leave_bytes, 0)))


@pytest.mark.parametrize("leave", ["nothing", "a little", "half the output",
                                   "all but the index"])
def test_full_disk_is_storage_full_and_leaves_no_partial_file(tmp_path, small_disk, leave,
                                                              rendered_example, example_avatar,
                                                              short_speech):
    """ENOSPC while writing the MP4, whether at its first bytes, midway, or in the last
    rewrite that moves the index to the front (faststart): storage.full, the partial file
    removed, never an internal error."""
    from dhserve.errors import DhserveError

    _, cache, _ = rendered_example
    whole = render(example_avatar, short_speech, tmp_path / "whole.mp4", RenderOptions(),
                   cache).path.stat().st_size
    assert whole < 300_000 - 16_384        # it would fit the disk were the disk not full
    left = {"nothing": 0, "a little": 8192, "half the output": whole // 2,
            "all but the index": whole - 4096}[leave]
    _fill(small_disk, left)
    with pytest.raises(DhserveError) as err:
        render(example_avatar, short_speech, small_disk / "o.mp4", RenderOptions(), cache)
    assert err.value.code == "storage.full"
    assert err.value.message == "the data disk is full: no space left to write the result"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]   # no .part left


# -- messages name the input, never the server's folders -------------------------------------

def test_messages_show_no_server_paths(tmp_path, example_avatar, short_speech):
    folder = tmp_path / "srv" / "data" / "temp"
    folder.mkdir(parents=True)
    cases = {"missing.mp4": None, "cut.mp4": example_avatar.read_bytes()[:3000],
             "notes.mp4": b"not a video\n" * 50, "empty.mp4": b""}
    for name, data in cases.items():
        if data is not None:
            (folder / name).write_bytes(data)
        with pytest.raises(InputError) as err:
            render(folder / name, short_speech, tmp_path / "out" / "o.mp4", RenderOptions(),
                   AnalysisCache(tmp_path / "cache"))
        assert str(tmp_path) not in err.value.message, err.value.message
        assert err.value.message.startswith("video: ")
    (tmp_path / "outdir").mkdir()
    with pytest.raises(InputError) as err:
        render(example_avatar, short_speech, tmp_path / "outdir", RenderOptions())
    assert str(tmp_path) not in err.value.message and "outdir" in err.value.message
