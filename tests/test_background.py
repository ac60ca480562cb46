"""Background removal: transparent WebM/MOV, colour and image backgrounds, cached masks.

Every output is decoded by a path independent of the writer: alpha of VP9 through the
libvpx-vp9 decoder (FFmpeg's native VP9 decoder drops it), ProRes through FFmpeg's decoder.
"""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dhserve.engine import background as background_module
from dhserve.engine.background import Compositor, edge_rows, frame_alpha
from dhserve.engine.face import AnalysisCache
from dhserve.engine.face.landmarks import (
    LOWER_LIP_INNER_MID,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
    UPPER_LIP_INNER_MID,
)
from dhserve.engine.face.segmentation import PersonSegmenter, smooth_masks
from dhserve.engine.pipeline import RenderOptions, render, segment_template
from dhserve.engine.progress import no_progress
from dhserve.errors import OptionsInvalid

GREEN = (0x00, 0xB1, 0x40)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("background")


@pytest.fixture(scope="module")
def cache(work) -> AnalysisCache:
    return AnalysisCache(work / "templates")


class Calls:
    """Counts the calls of a module function it stands in for (the real one does the work)."""

    def __init__(self, real):
        self.real, self.count = real, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def edge_work(monkeypatch) -> Calls:
    """The edge analysis of template frames (background._edge_cells), counted."""
    calls = Calls(background_module._edge_cells)
    monkeypatch.setattr(background_module, "_edge_cells", calls)
    return calls


@pytest.fixture(scope="module")
def transparent_webm(work, cache, tiny_template, tiny_speech):
    """The first render with a background: segments the template (cold cache); with the
    number of frames segmented and of edge analyses."""
    before = PersonSegmenter.calls
    with pytest.MonkeyPatch.context() as patch:
        edges = Calls(background_module._edge_cells)
        patch.setattr(background_module, "_edge_cells", edges)
        result = render(tiny_template, tiny_speech, work / "talk.webm",
                        RenderOptions(background="transparent"), cache)
    return result, PersonSegmenter.calls - before, edges.count


def _vp9_rgba(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        # demux ends with an empty packet, which flushes the decoder
        return [frame.to_ndarray(format="rgba")
                for packet in container.demux(stream) for frame in decoder.decode(packet)]


def _streams(path: Path) -> tuple[list[str], float]:
    with av.open(str(path)) as container:
        names = [s.codec_context.name for s in container.streams if s.type in ("video", "audio")]
        return names, float(container.duration / av.time_base)


def _face_points(cache: AnalysisCache, template: Path) -> np.ndarray:
    from dhserve.fsutil import file_digest

    analysis = cache.get(file_digest(template))
    assert analysis is not None
    return analysis.landmarks


def _assert_person_alpha(frames: list[np.ndarray], landmarks: np.ndarray) -> None:
    """Top corners (the studio backdrop) transparent, face and mouth opaque, every frame."""
    for index, rgba in enumerate(frames):
        alpha = rgba[..., 3]
        w = alpha.shape[1]
        assert alpha[:8, :8].max() <= 8 and alpha[:8, w - 8:].max() <= 8, index
        points = landmarks[index]        # speech shorter than the template: frame i is i
        mouth = (points[UPPER_LIP_INNER_MID] + points[LOWER_LIP_INNER_MID]) / 2
        for name, (x, y) in {"nose": points[NOSE_TIP], "mouth": mouth,
                             "left corner": points[MOUTH_LEFT],
                             "right corner": points[MOUTH_RIGHT]}.items():
            assert alpha[round(y), round(x)] >= 250, (index, name)


def test_transparent_webm_has_alpha_audio_and_the_speech_length(transparent_webm, cache,
                                                                  tiny_template):
    result, segmented, edge_analyses = transparent_webm
    assert segmented == 25                     # once per template frame, not per output frame
    assert edge_analyses == 25                 # with the masks, for the cache
    names, duration = _streams(result.path)
    assert names == ["vp9", "opus"]
    assert abs(duration - 0.6) <= 0.06
    frames = _vp9_rgba(result.path)
    assert len(frames) == result.frames == 15
    _assert_person_alpha(frames, _face_points(cache, tiny_template))


def test_second_render_does_no_segmentation(transparent_webm, work, cache, tiny_template,
                                            tiny_speech, edge_work):
    before = PersonSegmenter.calls
    result = render(tiny_template, tiny_speech, work / "again.mov",
                    RenderOptions(background="transparent"), cache)
    assert PersonSegmenter.calls == before and edge_work.count == 0    # both from the cache
    assert result.analysis_cached
    masks = list(cache.directory.glob("*.masks.*.bin"))
    assert len(masks) == 1 and masks[0].stat().st_size < 25 * 256 * 256 / 4   # compressed
    names, duration = _streams(result.path)
    assert names == ["prores", "pcm_s16le"] and abs(duration - 0.6) <= 0.06
    with av.open(str(result.path)) as container:
        frames = [f.to_ndarray(format="rgba") for f in container.decode(video=0)]
    assert len(frames) == 15
    _assert_person_alpha(frames, _face_points(cache, tiny_template))


def test_green_background_where_the_backdrop_was(transparent_webm, work, cache,
                                                 tiny_template, tiny_speech, edge_work):
    before = PersonSegmenter.calls
    result = render(tiny_template, tiny_speech, work / "green.mp4",
                    RenderOptions(background="#00b140"), cache)
    assert PersonSegmenter.calls == before and edge_work.count == 0
    names, duration = _streams(result.path)
    assert names == ["h264", "aac"] and abs(duration - 0.6) <= 0.06
    landmarks = _face_points(cache, tiny_template)
    with av.open(str(result.path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24").astype(int)
            for corner in (rgb[:16, :16], rgb[:16, -16:]):
                assert np.abs(corner - GREEN).max() <= 12, index
            x, y = landmarks[index][NOSE_TIP]
            assert np.abs(rgb[round(y), round(x)] - GREEN).sum() > 100   # the face stays


def test_image_background_is_scaled_to_cover(transparent_webm, work, cache, tiny_template,
                                             tiny_speech):
    image = np.zeros((100, 300, 3), np.uint8)            # wide: its sides are cut off
    image[:, :150] = (0, 0, 255)                          # BGR red left, blue right
    image[:, 150:] = (255, 0, 0)
    path = work / "studio.png"
    cv2.imwrite(str(path), image)
    result = render(tiny_template, tiny_speech, work / "studio.mp4",
                    RenderOptions(background=str(path)), cache)
    with av.open(str(result.path)) as container:
        rgb = next(iter(container.decode(video=0))).to_ndarray(format="rgb24").astype(int)
    assert np.abs(rgb[:16, :16] - (255, 0, 0)).max() <= 16
    assert np.abs(rgb[:16, -16:] - (0, 0, 255)).max() <= 16


@pytest.mark.parametrize("background, out, words", [
    ("transparent", "x.mp4", "use .webm or .mov"),
    ("#00b14", "x.mp4", "#rrggbb"),
    ("#gg0000", "x.mp4", "#rrggbb"),
    ("missing.jpg", "x.mp4", "no such image file"),
    ("notes.txt", "x.mp4", "not an image"),
])
def test_bad_background_is_refused_before_any_work(tmp_path, tiny_template, tiny_speech,
                                                   monkeypatch, background, out, words):
    (tmp_path / "notes.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    before = PersonSegmenter.calls
    with pytest.raises(OptionsInvalid) as refused:
        render(tiny_template, tiny_speech, tmp_path / out, RenderOptions(background=background),
               AnalysisCache(tmp_path / "templates"))
    assert refused.value.field == "background" and words in str(refused.value)
    assert PersonSegmenter.calls == before
    assert not (tmp_path / "templates").exists()          # no analysis either


def test_masks_are_smoothed_over_time():
    rng = np.random.default_rng(0)
    steady = np.full((20, 8, 8), 128, np.uint8)
    flicker = np.clip(steady + rng.normal(0, 40, steady.shape), 0, 255).astype(np.uint8)
    smoothed = smooth_masks(flicker)
    assert smoothed.dtype == np.uint8 and smoothed.shape == flicker.shape
    assert np.abs(np.diff(smoothed.astype(int), axis=0)).mean() < \
        0.5 * np.abs(np.diff(flicker.astype(int), axis=0)).mean()


def test_edge_is_antialiased_and_narrow():
    """A hard-edged low-resolution mask scaled up: no stair-steps (intermediate values along
    the edge) and no wide halo (the ramp spans a few pixels)."""
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 20, (255,), -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)              # as soft as the segmenter's
    alpha = frame_alpha(mask, None, 256, 256)
    row = alpha[128].astype(int)
    ramp = np.flatnonzero((row > 8) & (row < 247))
    assert 2 <= ramp.size <= 2 * 8                          # both sides, ≤ 8 px each
    assert np.abs(np.diff(row)).max() < 255                 # no hard step


MAGENTA, SKIN, HAIR = (255, 0, 255), (180, 140, 100), (90, 60, 30)


def _person_over_magenta(size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """A head (skin, a cap of hair) over a saturated magenta backdrop, and its mask as the
    segmenter gives it: half the resolution, soft, reaching 2 px past the person."""
    frame = np.full((size, size, 3), MAGENTA, np.uint8)
    cv2.ellipse(frame, (size // 2, size // 2 + 20), (50, 70), 0, 0, 360, SKIN, -1, cv2.LINE_AA)
    cv2.ellipse(frame, (size // 2, size // 2 - 10), (52, 45), 0, 180, 360, HAIR, -1,
                cv2.LINE_AA)
    person = np.any(frame != MAGENTA, axis=2).astype(np.uint8) * 255
    mask = cv2.resize(cv2.dilate(person, np.ones((5, 5), np.uint8)), (size // 2, size // 2),
                      interpolation=cv2.INTER_AREA)
    return frame, cv2.GaussianBlur(mask, (0, 0), 1.0)


def _magenta(rgb: np.ndarray) -> np.ndarray:
    """How magenta each pixel is: red and blue over green (0 for skin, hair, green)."""
    rgb = rgb.astype(float)
    return np.clip((rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1], 0, None)


def test_edge_keeps_little_of_the_old_backdrop():
    """The rim where the person's alpha is partial: over green, and in a transparent output's
    colours, the old magenta backdrop is taken out (blending alone keeps it in)."""
    frame, mask = _person_over_magenta()
    no_face = np.full((1, 468, 2), np.nan)
    alpha = frame_alpha(mask, None, 192, 192)
    ring = (alpha > 0) & (alpha < 255)
    assert ring.sum() > 500
    weight = alpha[..., None] / 255.0
    blended = frame * weight + np.array(GREEN) * (1 - weight)
    over_green = Compositor.create("#00b140", 192, 192)
    (green,) = over_green.apply([frame], [mask], no_face)
    assert _magenta(blended)[ring].mean() > 50                  # what blending alone leaves
    assert _magenta(green)[ring].mean() < 0.1 * _magenta(blended)[ring].mean()
    inside = cv2.erode((alpha == 255).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert (green[inside] == frame[inside]).all()               # the person is untouched
    assert (green[alpha == 0] == GREEN).all()
    (again,) = over_green.apply([frame], [mask], no_face, [edge_rows(frame, mask)])
    assert (again == green).all()                         # edge cells as the cache holds them
    (rgba,) = Compositor.create("transparent", 192, 192).apply([frame], [mask], no_face)
    assert (rgba[..., 3] == alpha).all()
    assert _magenta(rgba[..., :3])[ring].mean() < 0.1 * _magenta(frame)[ring].mean()
    assert (rgba[inside][:, :3] == frame[inside]).all()


def _segmented(template: Path, cache: AnalysisCache | None, analysed: AnalysisCache):
    from dhserve.engine.media import probe
    from dhserve.fsutil import file_digest

    digest = file_digest(template)
    analysis = analysed.get(digest)
    assert analysis is not None
    return segment_template(probe(template, "video"), analysis, digest, cache,
                            RenderOptions(background="transparent"), no_progress)


def _arrays(masks) -> list[np.ndarray]:
    """Every mask, the edge cells and their offsets, as arrays."""
    return [np.stack([masks.mask(i) for i in range(len(masks))]), np.asarray(masks.edges),
            masks.offsets]


def test_cached_masks_are_memory_mapped_not_read_whole(transparent_webm, cache,
                                                       tiny_template, edge_work):
    masks, cached = _segmented(tiny_template, cache, cache)
    assert cached and edge_work.count == 0
    assert len(masks) == 25 and masks.mask(0).shape == (256, 256)
    for array in (masks.masks.blobs, masks.edges):
        assert isinstance(array.base, mmap.mmap)             # a view of the file's mapping
    assert masks.edge_rows(3).shape[0] == masks.offsets[4] - masks.offsets[3] > 0
    assert (masks.mask(99) == masks.mask(24)).all()          # past the end: the last
    read = _arrays(masks)
    masks.release()                          # the pages let go of: read again from the file
    assert all((a == b).all() for a, b in zip(_arrays(masks), read, strict=True))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte in a mask", "cell off the grid"])
def test_damaged_or_old_masks_are_computed_again(transparent_webm, cache, tiny_template,
                                                 tmp_path, edge_work, tiny_speech, damage):
    """A damaged entry (cut short; a byte of a mask flipped, its length right; an edge cell
    off the grid, its checksum right) or one of an older version (other names) is computed
    again and stored whole: the render succeeds, with the masks a render without a cache has."""
    from dhserve.fsutil import file_digest

    damaged = AnalysisCache(tmp_path)
    digest = file_digest(tiny_template)
    damaged.put(digest, cache.get(digest))
    (tmp_path / f"{digest}.masks.v3.bin").write_bytes(b"an old entry")
    good, _ = _segmented(tiny_template, cache, cache)
    entry = damaged.masks_path_for(digest)
    data = bytearray(cache.masks_path_for(digest).read_bytes())
    if damage == "truncated":
        entry.write_bytes(data[:len(data) // 2])
    elif damage == "flipped byte in a mask":
        data[int(good.masks.offsets[3]) + 5] ^= 0x10
        entry.write_bytes(data)
    else:
        pairs = [(good.mask(i), np.array(good.edge_rows(i))) for i in range(len(good))]
        next(rows for _, rows in pairs if len(rows))[0, 6:] = 0xFF   # cell 65535 of 128 x 128
        damaged.store_masks(digest, iter(pairs), len(pairs))
    before = PersonSegmenter.calls
    result = render(tiny_template, tiny_speech, tmp_path / "talk.mp4",
                    RenderOptions(background="#00b140"), damaged)
    assert result.frames == 15 and PersonSegmenter.calls - before == edge_work.count == 25
    masks = damaged.get_masks(digest)
    assert masks is not None
    in_memory, _ = _segmented(tiny_template, None, cache)
    for again in (masks, in_memory):
        assert all((a == b).all() for a, b in zip(_arrays(again), _arrays(good), strict=True))
    assert not list(tmp_path.glob(".tmp-*"))               # nothing half-written left


def test_two_workers_storing_one_template_each_keep_a_whole_entry(tmp_path):
    """Two workers segmenting one new avatar at once, frame for frame: each gets its own
    masks back whole, and the entry left is one of the two, whole."""
    barrier = threading.Barrier(2, timeout=10)
    rng = np.random.default_rng(7)
    stored: dict[int, object] = {}
    made = {w: [(rng.integers(0, 256, (16, 12), np.uint8),
                 np.column_stack((rng.integers(0, 256, (k, 6), np.uint8),
                                  np.full((k, 2), [w + k, 0], np.uint8))))   # cells < 6 x 8
                for k in (3, 0, 5, 1)] for w in (0, 1)}

    def pairs(worker: int):
        for pair in made[worker]:
            barrier.wait()                  # both write frame i before either goes on
            yield pair
        barrier.wait()                      # and both close and rename at once

    def store(worker: int) -> None:
        stored[worker] = AnalysisCache(tmp_path).store_masks("ab" * 32, pairs(worker), 4)

    threads = [threading.Thread(target=store, args=(w,)) for w in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    expected = {w: [np.stack([m for m, _ in made[w]]), np.concatenate([r for _, r in made[w]]),
                    np.array([0, 3, 3, 8, 9])] for w in (0, 1)}
    for worker in (0, 1):
        assert all((a == b).all() for a, b in zip(_arrays(stored[worker]), expected[worker],
                                                  strict=True))
    on_disk = _arrays(AnalysisCache(tmp_path).get_masks("ab" * 32))
    assert any(all((a == b).all() for a, b in zip(on_disk, expected[w], strict=True))
               for w in (0, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{'ab' * 32}.masks.v4.bin"]


def test_face_is_opaque_whatever_the_mask_says(tiny_template, cache, transparent_webm):
    landmarks = _face_points(cache, tiny_template)
    compositor = Compositor.create("transparent", 256, 256)
    frame = np.zeros((256, 256, 3), np.uint8)
    (rgba,) = compositor.apply([frame], [np.zeros((256, 256), np.uint8)], landmarks[:1])
    x, y = landmarks[0][UPPER_LIP_INNER_MID]
    assert rgba[round(y), round(x), 3] == 255 and rgba[0, 0, 3] == 0


@pytest.mark.parametrize("background, words", [
    ("/etc/hosts", "an image background is the input `background`"),
    ("#00b14", "#rrggbb"),
    (7, "must be a string"),
])
def test_job_background_option_is_keep_transparent_or_a_colour(tmp_path, background, words):
    from dhserve.config import Settings
    from dhserve.jobs import JobSpec
    from dhserve.jobs.admission import check_job

    settings = Settings(data_dir=tmp_path)
    for good in ("#00B140", "transparent"):
        spec = JobSpec("/media/avatar.mp4", "/media/speech.wav", options={"background": good})
        assert check_job(settings, spec).background == good
    with pytest.raises(OptionsInvalid) as refused:
        check_job(settings, JobSpec("/media/avatar.mp4", "/media/speech.wav",
                                    options={"background": background}))
    assert refused.value.field == "background" and words in str(refused.value)


def test_cli_render_background(tmp_path, tiny_template, tiny_speech):
    from click.testing import CliRunner

    from dhserve.cli import main

    runner = CliRunner()
    refused = runner.invoke(main, ["--data-dir", str(tmp_path), "render", str(tiny_template),
                                   str(tiny_speech), "--background", "transparent",
                                   "--out", str(tmp_path / "x.mp4"), "--quiet"])
    assert refused.exit_code == 2
    assert "error options.invalid: background: " in refused.output
    assert "use .webm or .mov" in refused.output
    done = runner.invoke(main, ["--data-dir", str(tmp_path), "render", str(tiny_template),
                                str(tiny_speech), "--background", "transparent", "--quiet"])
    assert done.exit_code == 0, done.output
    (made,) = (tmp_path / "results").glob("*.webm")
    assert _vp9_rgba(made)[0][0, 0, 3] <= 8


def test_easy_submit_renders_a_green_background(service, tiny_template, tiny_speech):
    import shutil

    from conftest import wait_for

    svc = service()
    svc.start_worker()
    svc.temp.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_template, svc.temp / "avatar.mp4")
    shutil.copy(tiny_speech, svc.temp / "speech.wav")
    refused = svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "avatar.mp4", "code": "see-through",
        "background": "transparent"}).get_json()
    assert refused["code"] == 10000                  # refusals are recorded: status 3
    failed = svc.client.get("/easy/query?code=see-through").get_json()["data"]
    assert failed["status"] == 3 and "background" in failed["msg"], failed
    answer = svc.client.post("/easy/submit", json={
        "audio_url": "speech.wav", "video_url": "avatar.mp4", "code": "green",
        "background": "#00b140"}).get_json()
    assert answer["code"] == 10000

    def done():
        data = svc.client.get("/easy/query?code=green").get_json()["data"]
        return data if data["status"] != 1 else None

    data = wait_for(done, 90, "the green render")
    assert data["status"] == 2 and data["result"] == "/green-r.mp4"
    with av.open(str(svc.temp / "green-r.mp4")) as container:
        rgb = next(iter(container.decode(video=0))).to_ndarray(format="rgb24").astype(int)
    assert np.abs(rgb[:16, :16] - GREEN).max() <= 12


def test_overlays_stay_on_top_of_a_transparent_background():
    from dhserve.engine.background import apply_over

    rgba = np.zeros((32, 32, 4), np.uint8)            # fully transparent frame

    def watermark(frames):
        drawn = [f.copy() for f in frames]
        for f in drawn:
            f[-8:, -8:] = 255                          # a white mark bottom-right
        return drawn

    (out,) = apply_over(watermark, [rgba])
    assert out.shape == (32, 32, 4)
    assert (out[-8:, -8:, 3] == 255).all() and (out[:24, :24, 3] == 0).all()
