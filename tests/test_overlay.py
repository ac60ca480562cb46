"""The watermark and the "AI-generated" label: drawn where a viewer looks for them, nothing
else in the picture changed, and a job asking for one the server cannot draw is refused."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dhserve.config import Settings
from dhserve.engine.overlay import OverlayImage, apply_overlays, check_overlay_file
from dhserve.engine.pipeline import RenderOptions, render
from dhserve.engine.progress import CallbackProgress
from dhserve.errors import InputError
from dhserve.jobs import JobSpec
from dhserve.jobs.admission import check_job

MAGENTA = (255, 0, 255)
GREEN = (0, 200, 0)
SIZE, MARGIN = 256, 5           # the tiny template's frame; 2 % of 256, rounded
FIT = int(0.2 * SIZE)           # 51: an overlay's largest side on it


def write_rgba(path: Path, rgba: np.ndarray) -> Path:
    """A PNG from RGB(A) pixels (cv2 writes BGR(A))."""
    order = [2, 1, 0, 3][:rgba.shape[2]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgba[..., order]))
    return path


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
                        ).astype(np.float32)


def changed_box(plain: np.ndarray, marked: np.ndarray, quadrant) -> tuple[np.ndarray, ...]:
    """Rows and columns of `quadrant` where the overlay clearly changed the picture."""
    changed = np.abs(marked - plain).mean(axis=(0, 3))[quadrant] > 40
    return np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))


def near(found: np.ndarray, span: tuple[int, int], slack: int = 2) -> bool:
    """The first and last of `found` are the ends of `span`, give or take H.264's blur."""
    return abs(found[0] - span[0]) <= slack and abs(found[-1] - span[1]) <= slack


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A 40x40 magenta watermark with a transparent 16x16 hole; a 1000x600 green label, no
    alpha (opaque), far larger than the frame; a file that is not an image."""
    folder = tmp_path_factory.mktemp("overlays")
    mark = np.zeros((40, 40, 4), np.uint8)
    mark[...] = (*MAGENTA, 255)
    mark[12:28, 12:28, 3] = 0
    label = np.zeros((600, 1000, 3), np.uint8)
    label[...] = GREEN
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)   # right signature, no image
    return {"watermark": write_rgba(folder / "mark.png", mark),
            "label": write_rgba(folder / "label.png", label), "corrupt": corrupt}


@pytest.fixture(scope="module")
def renders(tmp_path_factory, tiny_template, tiny_speech, images):
    """The tiny template rendered without overlays and with both, decoded."""
    work = tmp_path_factory.mktemp("overlay-render")
    settings = Settings(data_dir=work, watermark_image=images["watermark"],
                        ai_label_image=images["label"])
    plain = render(tiny_template, tiny_speech, work / "plain.mp4", settings=settings)
    marked = render(tiny_template, tiny_speech, work / "marked.mp4",
                    RenderOptions(watermark=True, ai_label=True), settings=settings)
    assert (marked.width, marked.height, marked.frames) == (SIZE, SIZE, plain.frames)
    return decode(plain.path), decode(marked.path)


def test_watermark_is_drawn_bottom_right_with_its_hole(renders):
    plain, marked = renders
    x0 = SIZE - MARGIN - 40                                     # 211: 40 px fit, no scaling
    ring = marked[:, x0 + 2:x0 + 10, x0 + 2:x0 + 38]            # top band of the square
    assert np.abs(ring.mean(axis=(0, 1, 2)) - MAGENTA).max() < 12
    hole = np.s_[:, x0 + 16:x0 + 24, x0 + 16:x0 + 24]           # inside the transparent hole
    assert np.abs(marked[hole] - plain[hole]).mean() < 8
    assert np.abs(marked[hole].mean(axis=(0, 1, 2)) - MAGENTA).max() > 60
    rows, cols = changed_box(plain, marked, np.s_[SIZE // 2:, SIZE // 2:])
    assert near(rows + SIZE // 2, (x0, x0 + 39)) and near(cols + SIZE // 2, (x0, x0 + 39))


def test_large_label_is_scaled_down_into_the_top_left(renders):
    """1000x600 on a 256x256 frame: 51x30 (20 % of the width, aspect kept), opaque."""
    plain, marked = renders
    inside = marked[:, MARGIN + 3:MARGIN + 27, MARGIN + 3:MARGIN + 48]
    assert np.abs(inside.mean(axis=(0, 1, 2)) - GREEN).max() < 12
    rows, cols = changed_box(plain, marked, np.s_[:SIZE // 2, :SIZE // 2])
    assert near(rows, (MARGIN, MARGIN + 29)) and near(cols, (MARGIN, MARGIN + FIT - 1))


def test_rest_of_the_picture_is_unchanged(renders):
    """Away from the two rectangles the output matches a render without overlays, within
    H.264's noise (the encoder spends its bits a little differently)."""
    plain, marked = renders
    away = np.ones((SIZE, SIZE), bool)
    away[:MARGIN + 30 + 8, :MARGIN + FIT + 8] = False
    away[SIZE - MARGIN - 40 - 8:, SIZE - MARGIN - 40 - 8:] = False
    assert np.abs(marked - plain)[:, away].mean() < 2.0
    assert np.abs(marked - plain)[:, ~away].mean() > 20


def test_blend_is_exact_and_leaves_its_inputs_alone(tmp_path):
    """Opaque pixels take the colour, clear ones keep the frame, half-clear ones mix; only
    the overlay's rectangle changes, and the given frames (possibly shared) are not."""
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[...] = (200, 40, 0, 255)
    rgba[:, 4:8, 3] = 0
    rgba[:, 8:, 3] = 128
    overlay = OverlayImage.read(write_rgba(tmp_path / "o.png", rgba), "watermark").place(
        200, 100, "bottom-right")
    assert overlay.box == (200 - 2 - 12, 100 - 2 - 10, 198, 98)
    frame = np.full((100, 200, 3), 100, np.uint8)
    (out,) = apply_overlays([overlay], [frame])
    assert (frame == 100).all()
    x0, y0, x1, y1 = overlay.box
    box = out[y0:y1, x0:x1].astype(int)
    assert (box[:, :4] == (200, 40, 0)).all() and (box[:, 4:8] == 100).all()
    a = 128 / 255
    assert np.abs(box[:, 8:] - np.round(np.array([200, 40, 0]) * a + 100 * (1 - a))).max() <= 1
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == 100).all()


@pytest.mark.parametrize("shape, expected", [
    ((600, 1000), (30, 51)),      # wider than the frame: 20 % of its width, aspect kept
    ((2000, 100), (51, 2)),       # very tall: 20 % of its height
    ((10, 12), (10, 12)),         # small: never scaled up
])
def test_fitted_within_a_fifth_of_the_frame(tmp_path, shape, expected):
    pixels = np.full((*shape, 3), 255, np.uint8)
    image = OverlayImage.read(write_rgba(tmp_path / "o.png", pixels), "ai_label")
    overlay = image.place(SIZE, SIZE, "top-left")
    assert overlay.rgb.shape[:2] == expected and overlay.box[:2] == (MARGIN, MARGIN)


def test_grey_and_16_bit_images_are_read(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((4, 4), 128, np.uint8))
    deep = write_rgba(tmp_path / "deep.png", np.full((4, 4, 4), 65535, np.uint16))
    g, d = OverlayImage.read(grey, "watermark"), OverlayImage.read(deep, "watermark")
    assert np.allclose(g.rgb, 128) and np.allclose(g.alpha, 1)
    assert np.allclose(d.rgb, 255) and np.allclose(d.alpha, 1)


@pytest.mark.parametrize("option, env", [("watermark", "DHSERVE_WATERMARK_IMAGE"),
                                         ("ai_label", "DHSERVE_AI_LABEL_IMAGE")])
def test_unconfigured_overlay_is_refused_before_rendering(tmp_path, tiny_speech, option, env):
    """Refused before the inputs are even probed (the video here does not exist) and before
    any progress, and at submit by check_job."""
    settings = Settings(data_dir=tmp_path)
    updates = []
    with pytest.raises(InputError) as info:
        render(tmp_path / "no-such-video.mp4", tiny_speech, tmp_path / "out.mp4",
               RenderOptions(**{option: True}), settings=settings,
               progress=CallbackProgress(lambda f, s: updates.append(s)))
    assert (info.value.code, info.value.field) == ("overlay.not_configured", option)
    assert env in info.value.message and not updates
    assert not (tmp_path / "out.mp4").exists()
    with pytest.raises(InputError) as info:
        check_job(settings, JobSpec("/m/a.mp4", "/m/s.wav", options={option: True}))
    assert (info.value.code, info.value.field) == ("overlay.not_configured", option)
    assert info.value.message == f"{option}: needs an image; set {env}"


@pytest.mark.parametrize("name, reason", [("corrupt", "not an image"),
                                          ("missing", "file not found"),
                                          ("folder", "directory")])
def test_broken_overlay_file_is_invalid(tmp_path, tiny_template, tiny_speech, images, name,
                                        reason):
    path = {"corrupt": images["corrupt"], "missing": tmp_path / "gone.png",
            "folder": tmp_path}[name]
    settings = Settings(data_dir=tmp_path, watermark_image=path)
    with pytest.raises(InputError) as info:
        check_job(settings, JobSpec("/m/a.mp4", "/m/s.wav", options={"watermark": True}))
    assert (info.value.code, info.value.field) == ("overlay.invalid", "watermark")
    assert path.name in info.value.message and reason in info.value.message
    with pytest.raises(InputError) as info:
        render(tiny_template, tiny_speech, tmp_path / "out.mp4", RenderOptions(watermark=True),
               settings=settings)
    assert info.value.code == "overlay.invalid" and reason in info.value.message


def test_overlay_file_is_checked_again_once_it_changed(tmp_path, images):
    path = tmp_path / "mark.png"
    path.write_bytes(images["watermark"].read_bytes())
    check_overlay_file(path, "watermark")
    path.write_bytes(b"not a picture")
    with pytest.raises(InputError, match="not an image"):
        check_overlay_file(path, "watermark")


def test_configured_overlays_are_accepted_and_unused_ones_ignored(tmp_path, images):
    spec = JobSpec("/m/a.mp4", "/m/s.wav", options={"watermark": True, "ai_label": True})
    options = check_job(Settings(data_dir=tmp_path, watermark_image=images["watermark"],
                                 ai_label_image=images["label"]), spec)
    assert options.watermark and options.ai_label
    # A broken image the job does not ask for is no reason to refuse it.
    assert not check_job(Settings(data_dir=tmp_path, watermark_image=images["corrupt"]),
                         JobSpec("/m/a.mp4", "/m/s.wav")).watermark


@pytest.mark.parametrize("option", ["watermark", "ai_label"])
def test_option_must_be_a_boolean(tmp_path, option):
    with pytest.raises(InputError) as info:
        check_job(Settings(data_dir=tmp_path),
                  JobSpec("/m/a.mp4", "/m/s.wav", options={option: "yes"}))
    assert (info.value.code, info.value.field) == ("options.invalid", option)
    assert "true or false" in info.value.message
    with pytest.raises(InputError):
        RenderOptions(**{option: 1})
