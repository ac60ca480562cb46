"""Where inputs may come from: URLs, files inside the allowed folders; nothing else is opened."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dhserve.api.inputs import resolve_input
from dhserve.config import Settings
from dhserve.errors import InputError


@pytest.fixture
def settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.temp_dir.mkdir(parents=True)
    (settings.temp_dir / "a.wav").write_bytes(b"RIFF")
    (settings.data_dir / "avatars").mkdir()
    (settings.data_dir / "avatars" / "b.mp4").write_bytes(b"....ftyp")
    return settings


def refused(value, settings) -> str:
    with pytest.raises(InputError) as caught:
        resolve_input(value, "audio_url", settings)
    assert caught.value.field == "audio_url"
    return caught.value.code


def test_urls_bare_names_and_relative_paths(settings):
    data = settings.data_dir.resolve()
    assert resolve_input("https://cdn.example.com/a.wav?x=1", "f", settings) == \
        "https://cdn.example.com/a.wav?x=1"
    assert resolve_input("a.wav", "f", settings) == str(data / "temp" / "a.wav")
    assert resolve_input("avatars/b.mp4", "f", settings) == str(data / "avatars" / "b.mp4")
    assert resolve_input(str(data / "avatars" / "b.mp4"), "f", settings) == \
        str(data / "avatars" / "b.mp4")
    inside = settings.temp_dir / "inside.wav"
    inside.symlink_to(settings.temp_dir / "a.wav")            # a link that stays inside
    assert resolve_input("inside.wav", "f", settings) == str(data / "temp" / "a.wav")


def test_escapes_and_schemes_are_refused(settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    (settings.temp_dir / "file-link.wav").symlink_to(outside / "secret.wav")
    (settings.temp_dir / "dir-link").symlink_to(outside)
    cases = {
        "../outside/secret.wav": "input.path_not_allowed",
        "temp/../../outside/secret.wav": "input.path_not_allowed",
        str(outside / "secret.wav"): "input.path_not_allowed",
        "/etc/passwd": "input.path_not_allowed",
        "file-link.wav": "input.path_not_allowed",
        "temp/dir-link/secret.wav": "input.path_not_allowed",
        "a.wav\x00.mp4": "input.path_not_allowed",
        "file:///etc/passwd": "input.scheme_not_allowed",
        "ftp://example.com/a.wav": "input.scheme_not_allowed",
        "data:audio/wav;base64,UklGRg==": "input.scheme_not_allowed",
        "http:///no-host.wav": "input.invalid_url",
        "": "request.invalid",
        42: "request.invalid",
    }
    assert {value: refused(value, settings) for value in cases} == cases


def test_outside_paths_are_refused_without_being_opened(settings, tmp_path):
    """A FIFO outside the roots blocks whoever opens it: the answer must come at once, and
    it must read the same whether the outside file exists or not."""
    fifo = tmp_path / "trap.wav"
    os.mkfifo(fifo)
    (settings.temp_dir / "trap.wav").symlink_to(fifo)
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.extend(
        [refused(str(fifo), settings), refused("trap.wav", settings)]), daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():                       # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("the path outside the roots was opened")
    assert answers == ["input.path_not_allowed"] * 2
    with pytest.raises(InputError) as exists:
        resolve_input(str(fifo), "f", settings)
    with pytest.raises(InputError) as missing:
        resolve_input(str(tmp_path / "no-such.wav"), "f", settings)
    assert exists.value.reason.replace(str(fifo), "X") == \
        missing.value.reason.replace(str(tmp_path / "no-such.wav"), "X")


def test_extra_roots_widen_what_may_be_named(settings, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c.wav").write_bytes(b"RIFF")
    wider = Settings(data_dir=settings.data_dir,
                     input_roots=os.pathsep.join([str(settings.data_dir), str(shared)]))
    assert resolve_input(str(shared / "c.wav"), "f", wider) == str((shared / "c.wav").resolve())
    assert refused(str(shared / "c.wav"), settings) == "input.path_not_allowed"


def test_an_image_name_is_a_file_name_not_a_sequence_pattern(settings, tmp_path):
    """FFmpeg's image2 reads "shot%d.png" as shot0.png, shot1.png, ...: names that were
    never checked (here a link out of the data dir). The literal file is what is read."""
    import cv2
    import numpy as np

    from dhserve.engine.media import probe
    from dhserve.jobs.admission import check_media

    cv2.imwrite(str(tmp_path / "secret.png"), np.zeros((99, 77, 3), np.uint8))
    cv2.imwrite(str(settings.temp_dir / "shot%d.png"), np.zeros((20, 30, 3), np.uint8))
    (settings.temp_dir / "shot0.png").symlink_to(tmp_path / "secret.png")
    path = resolve_input("shot%d.png", "video", settings)
    check_media(path, "video", "video", 10, settings.max_video_pixels)
    video = probe(Path(path), "video").video
    assert (video.width, video.height) == (30, 20)


def test_a_template_over_the_services_pixel_limit_is_refused_at_submit(service, tiny_template):
    """DHSERVE_MAX_VIDEO_PIXELS, as the operator set it, is what a submit checks (from the
    header, before a picture is decoded), not only the worker."""
    import shutil

    svc = service(max_video_pixels=100 * 100)
    svc.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_template, svc.temp / "avatar.mp4")              # 256x256
    shutil.copy(tiny_template, svc.temp / "speech.mp4")              # its soundtrack
    response = svc.client.post("/v1/jobs", json={"video": "avatar.mp4", "audio": "speech.mp4"})
    assert response.status_code == 422, response.get_json()
    assert (response.get_json()["code"], response.get_json()["field"]) == ("video.too_large",
                                                                         "video")
