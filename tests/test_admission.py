"""Admission without Flask: what `admit` answers for a replay when the disk is short, and
how a background image is judged."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from dhserve.config import Settings
from dhserve.errors import InputError, StorageFull
from dhserve.jobs.admission import admit, check_background_image
from dhserve.jobs.model import JobSpec, JobState
from dhserve.jobs.store import JobStore

SPEC = JobSpec("/m/avatar.mp4", "/m/speech.wav")
NO_SPACE = 1e12      # MB: more than any disk has


@pytest.fixture
def store(tmp_path):
    store = JobStore.from_settings(Settings(data_dir=tmp_path))
    yield store
    store.engine.dispose()


def test_a_storage_full_job_is_not_queued_again_while_space_is_still_short(tmp_path, store):
    short = Settings(data_dir=tmp_path, min_free_mb=NO_SPACE)
    job, created = admit(short, store, "full-1", SPEC, record_refusal=True)
    assert created and job.state is JobState.FAILED and job.error_code == "storage.full"
    again, created = admit(short, store, "full-1", SPEC, record_refusal=True)
    assert not created and again.state is JobState.FAILED
    with pytest.raises(StorageFull):                # a new job is refused outright
        admit(short, store, "full-2", SPEC)
    space = Settings(data_dir=tmp_path, min_free_mb=0)
    requeued, created = admit(space, store, "full-1", SPEC, record_refusal=True)
    assert created and requeued.state is JobState.QUEUED


def test_a_background_image_is_judged_by_its_header_before_it_is_decoded(tmp_path):
    """A PNG whose header declares 20000 x 20000 pixels (a decompression bomb's shape) is
    refused from those 33 bytes; a real image passes; a text file is no image; a TIFF (whose
    size is not read from a header here) is refused before OpenCV would decode 64 MP of it;
    a PNG with a good header and broken pixels passes the submit (nothing is decoded on the
    web tier) and is refused by the worker's check, which decodes."""
    settings = Settings(data_dir=tmp_path, max_video_pixels=1920 * 1080)
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header
                     + struct.pack(">I", zlib.crc32(b"IHDR" + header)))
    photo, notes = tmp_path / "photo.jpg", tmp_path / "notes.png"
    cv2.imwrite(str(photo), np.full((3024, 2737, 3), 90, np.uint8))   # 4 x 1080p: allowed
    notes.write_text("hello")
    tiff = tmp_path / "big.tif"          # 8000 x 8000, a few hundred KB deflated
    assert cv2.imwrite(str(tiff), np.zeros((8000, 8000), np.uint8),
                       [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    check_background_image(photo, settings)
    broken = tmp_path / "broken.png"
    broken.write_bytes(cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1]
                       .tobytes()[:60])     # the header, then the pixels cut off
    check_background_image(broken, settings)
    with pytest.raises(InputError) as refused:
        check_background_image(broken, settings, decode=True)
    assert (refused.value.code, refused.value.field) == ("options.invalid", "background")
    for path, code, words in ((bomb, "options.invalid", "bomb.png: the image is 20000x20000, "
                                                         "over the limit of 8294400 pixels"),
                              (notes, "options.invalid", "notes.png: not an image of a kind accepted"),
                              (tiff, "options.invalid", "big.tif: not an image of a kind accepted here (PNG, JPEG, WebP, BMP or GIF)"),
                              (tmp_path / "gone.png", "input.not_found", "no such file")):
        with pytest.raises(InputError) as refused:
            check_background_image(path, settings)
        assert (refused.value.code, refused.value.field) == (code, "background")
        assert words in refused.value.reason and str(tmp_path) not in refused.value.reason
